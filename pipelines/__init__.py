"""Everything torch and diffusers: requests, the engine, samplers, the embedded model.

Nothing here imports Gradio or SQLAlchemy. Importing the package itself is
cheap; ``pipelines.engine`` is where torch comes in.
"""
