"""Everything torch and diffusers: requests, the engine, samplers, the embedded model.

Nothing here imports Gradio or SQLAlchemy. Importing the package itself is
cheap; ``pipelines.engine`` and the modules it runs models with are where
torch comes in. ``requests``, ``limits``, ``errors``, ``sources`` and
``progress`` never import it: the UI and the studio's queue use them first.
"""
