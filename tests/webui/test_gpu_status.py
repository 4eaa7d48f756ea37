"""The page's "No GPU workers reachable" line: there on a Ray pool that cannot be reached, absent on the local engine.

No cluster is needed: the pool's address is a loopback port nobody listens on.
"""

from __future__ import annotations

import gradio as gr

from storage import Users
from webui.app import build_app, gpu_status_line
from webui.executors import UNREACHABLE, RayExecutor
from webui.jobs import REFUSALS_AT_ONCE
from webui.settings import Settings
from webui.studio import Studio

from .conftest import free_port


def _timers(app: gr.Blocks) -> list[gr.Timer]:
    return [block for block in app.blocks.values() if isinstance(block, gr.Timer)]


def test_a_pool_out_of_reach_is_said_on_the_page(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data",
        user="ada",
        executor="ray",
        ray_address=f"127.0.0.1:{free_port()}",
        ray_max_replicas=2,
        gpu_workers=3,
    )
    studio = Studio.from_settings(settings)
    users = Users(url=settings.gallery_url)
    try:
        assert isinstance(studio.engine, RayExecutor)
        assert studio.gpu_status() == UNREACHABLE
        assert gpu_status_line(studio)() == UNREACHABLE
        app = build_app(studio, users)
        # The line is refreshed every few seconds; the GPU events' concurrency is the pool's, not gpu_workers.
        assert len(_timers(app)) == 1
        assert studio.workers.count == 2
        gpu = [fn for fn in app.fns.values() if fn.concurrency_id == "gpu"]
        assert gpu and all(fn.concurrency_limit == settings.queue_limit + 2 + REFUSALS_AT_ONCE for fn in gpu)
    finally:
        users.close()
        studio.close()


def test_the_local_engine_has_no_status_line(studio):
    users = Users(url=studio.settings.gallery_url)
    try:
        assert studio.gpu_status() is None
        assert not studio.pooled
        app = build_app(studio, users)
        assert _timers(app) == []
        assert not any(block.elem_id == "atelier-gpu-status" for block in app.blocks.values())
        assert studio.workers.count == studio.settings.gpu_workers
    finally:
        users.close()
