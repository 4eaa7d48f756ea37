"""The application: settings, the studio service, the Gradio UI and the CLI.

The only room that sees both ``pipelines`` and ``storage``.
"""
