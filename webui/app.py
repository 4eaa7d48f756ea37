"""The Gradio Blocks app: one tab module each, wired to one studio service."""

from __future__ import annotations

import threading

import gradio as gr

from webui.jobs import Jobs
from webui.settings import Settings
from webui.studio import Studio
from webui.tabs import gallery as gallery_tab
from webui.tabs import txt2img as txt2img_tab

CSS = """
#atelier-header h1 { margin-bottom: 0; }
"""


def build_app(studio: Studio) -> gr.Blocks:
    jobs = Jobs(studio)
    with gr.Blocks(title="Atelier") as app:
        gr.Markdown(f"# Atelier\nModel: `{studio.settings.model}` · data: `{studio.settings.data_dir}`", elem_id="atelier-header")
        with gr.Tabs():
            with gr.Tab("Text to image", id="txt2img"):
                txt2img = txt2img_tab.build(jobs)
            with gr.Tab("Gallery", id="gallery"):
                gallery = gallery_tab.build(jobs)
        # A new image shows up in the gallery without a manual refresh.
        txt2img["generated"].success(gallery["refresh"], outputs=gallery["outputs"], queue=False, api_visibility="private")
        app.load(gallery["refresh"], outputs=gallery["outputs"], queue=False, api_visibility="private")
    # Waiting users see their place in line; the GPU events limit themselves.
    app.queue(default_concurrency_limit=studio.settings.gpu_workers)
    return app


def launch(studio: Studio, *, prevent_thread_lock: bool = False, quiet: bool = False) -> gr.Blocks:
    settings = studio.settings
    app = build_app(studio)
    app.launch(
        server_name=settings.host,
        server_port=settings.port,
        # Gradio serves files only from these; the gallery's files live here.
        allowed_paths=[str(settings.data_dir.resolve())],
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=True,
        css=CSS,
    )
    return app


def serve(settings: Settings) -> None:
    studio = Studio.from_settings(settings)
    # Load the model while the page is already up: the first click then waits
    # on the engine's lock instead of the page waiting on the model.
    threading.Thread(target=studio.engine.load, args=(settings.model,), daemon=True).start()
    print(f"Atelier on http://{settings.host}:{settings.port} · model {settings.model} · data {settings.data_dir}", flush=True)
    try:
        launch(studio)
    finally:
        studio.close()
