"""The Ray Serve pool behind the fair queue, on a real Ray cluster on loopback (tests/webui/conftest.py).

Two CPU replicas, each pinned to one torch thread, the embedded model; the
studio's persisted queue stays the source of truth.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipelines.requests import Text2ImgRequest
from storage import Gallery
from webui.executors import UNREACHABLE, RayExecutor
from webui.settings import Settings
from webui.studio import Studio

from .conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]  # this checkout, for `atelier serve` and its replicas
ATELIER = Path(sys.executable).with_name("atelier")


def _request(seed: int, *, steps: int = 4, size: int = 64) -> Text2ImgRequest:
    return Text2ImgRequest(
        prompt=f"a red cube {seed}",
        seed=seed,
        model="embedded",
        width=size,
        height=size,
        num_inference_steps=steps,
        guidance_scale=5.0,
        sampler="Euler",
    )


@pytest.fixture(scope="module")
def pool(ray_cluster_port) -> RayExecutor:
    """One pool for the module (deploying replicas takes seconds); it connects on first use."""
    executor = RayExecutor(
        address=f"127.0.0.1:{ray_cluster_port}",
        min_replicas=2,
        max_replicas=2,
        threads=1,
        retry_seconds=0.5,
        engine_options={"device": "cpu"},
    )
    yield executor
    executor.close()


def _studio(tmp_path, pool: RayExecutor, **settings) -> Studio:
    settings = Settings(data_dir=tmp_path / "data", user="ada", executor="ray", **settings)
    settings.data_dir.mkdir(parents=True)
    gallery = Gallery(url=settings.gallery_url, data_dir=settings.data_dir, lease_seconds=settings.lease_seconds)
    return Studio(settings=settings, gallery=gallery, engine=pool)


def test_cluster_away_keeps_jobs_queued_with_a_status_then_runs_them(tmp_path, pool, ray_cluster_port, request):
    studio = _studio(tmp_path, pool)
    try:
        # 1. Nothing listens yet: the status says so, workers claim nothing, the gallery works.
        assert studio.gpu_status() == UNREACHABLE
        record = studio.enqueue(_request(1), user="ada")
        studio.workers.start()
        time.sleep(2)
        assert studio.gallery.get(record.id).status == "queued"
        assert studio.gpu_status() == UNREACHABLE
        # 2. The cluster comes up on that address: the job runs.
        request.getfixturevalue("ray_cluster")
        wait_until(lambda: studio.gallery.get(record.id).status == "succeeded", what="the queued job", timeout=300)
        assert studio.gpu_status() is None
        ended = studio.gallery.get(record.id)
        assert {"node", "replica", "device_name"} <= set(ended.environment)
        assert ended.environment["threads"] == 1
    finally:
        studio.close()


def test_jobs_from_two_users_land_exactly_once_in_fair_order(tmp_path, pool, ray_cluster):
    studio = _studio(tmp_path, pool)
    try:
        queued = [studio.enqueue(_request(10 + n), user="ada") for n in range(3)]
        queued += [studio.enqueue(_request(20 + n), user="bob") for n in range(2)]
        studio.workers.start()
        ids = [record.id for record in queued]
        wait_until(lambda: all(studio.gallery.get(i).status == "succeeded" for i in ids), what="five jobs", timeout=300)
        records = [studio.gallery.get(i) for i in ids]
        assert studio.gallery.count() == 5
        assert all(len(record.outputs) == 1 for record in records)
        started = sorted(records, key=lambda record: record.started_at)
        assert [record.user for record in started] == ["ada", "bob", "ada", "bob", "ada"]
        # Both replicas took jobs.
        assert len({record.environment["replica"] for record in records}) == 2
    finally:
        studio.close()


def test_cancel_reaches_a_job_running_on_a_replica(tmp_path, pool, ray_cluster):
    studio = _studio(tmp_path, pool)
    try:
        ticket = studio.workers.enqueue(_request(30, steps=150, size=256), user="ada")
        steps: list[int] = []
        waiter = threading.Thread(target=lambda: _wait(ticket, studio, steps), daemon=True)
        waiter.start()
        wait_until(lambda: steps, what="the first step", timeout=120)
        began = time.monotonic()
        studio.workers.cancel(ticket, by="ada", is_admin=False)
        waiter.join(60)
        assert studio.gallery.get(ticket.generation_id).status == "cancelled"
        # The replica stopped too: both replicas take new jobs at once, long before 150 steps at 256x256 could end.
        again = [studio.enqueue(_request(40 + n), user="ada") for n in range(2)]
        wait_until(
            lambda: all(studio.gallery.get(r.id).status == "succeeded" for r in again), what="two jobs", timeout=60
        )
        assert len({studio.gallery.get(r.id).environment["replica"] for r in again}) == 2
        assert time.monotonic() - began < 60
    finally:
        studio.close()


def _wait(ticket, studio, steps):
    try:
        ticket.wait(studio.gallery, waiting=lambda place: None, progress=lambda step, total: steps.append(step))
    except Exception:  # the test reads the record
        pass


def test_a_replica_killed_mid_job_leaves_one_interrupted_row_and_loses_none(tmp_path, pool, ray_cluster):
    studio = _studio(tmp_path, pool)
    try:
        ticket = studio.workers.enqueue(_request(50, steps=150, size=256), user="ada")
        steps: list[int] = []
        waiter = threading.Thread(target=lambda: _wait(ticket, studio, steps), daemon=True)
        waiter.start()
        wait_until(lambda: steps, what="the first step", timeout=120)
        running = studio.gallery.get(ticket.generation_id)
        assert running.status == "running"
        os.kill(pool.last_started["pid"], signal.SIGKILL)  # the one job running: its replica's worker process
        others = [studio.enqueue(_request(60 + n), user="bob") for n in range(3)]
        waiter.join(120)
        ended = studio.gallery.get(ticket.generation_id)
        assert ended.status == "interrupted"
        assert "GPU worker" in ended.error
        wait_until(
            lambda: all(studio.gallery.get(r.id).status == "succeeded" for r in others), what="the others", timeout=300
        )
        # No duplicate and no lost row: exactly the four jobs, each once.
        assert studio.gallery.count() == 4
        assert not ended.outputs
    finally:
        studio.close()


def test_a_record_made_on_ray_reruns_identically_with_the_local_executor(tmp_path, pool, ray_cluster):
    studio = _studio(tmp_path, pool)
    try:
        record = studio.enqueue(_request(70), user="ada")
        studio.workers.start()
        wait_until(lambda: studio.gallery.get(record.id).status == "succeeded", what="the job", timeout=300)
    finally:
        studio.close()
    import torch

    assert torch.get_num_threads() == 1  # as the replicas (tests/conftest.py)
    local = Studio.from_settings(Settings(data_dir=tmp_path / "data", user="ada"))
    try:
        outcome = local.rerun(record.id, user="ada")
    finally:
        local.close()
    assert outcome.identical, outcome.differences
    assert outcome.record.environment["threads"] == outcome.parent.environment["threads"] == 1
    # What differs is said: it ran elsewhere.
    assert any(reason.startswith("replica changed") for reason in outcome.differences) or outcome.identical


def test_two_users_jobs_land_once_in_a_postgresql_gallery(tmp_path, pool, ray_cluster, pg_url):
    settings = Settings.from_env(
        {
            "ATELIER_DATABASE_URL": pg_url,
            "ATELIER_DATA_DIR": str(tmp_path / "data"),
            "ATELIER_USER": "ada",
            "ATELIER_EXECUTOR": "ray",
        },
        env_file=None,
    )
    assert settings.gallery_url.startswith("postgresql")
    settings.data_dir.mkdir(parents=True)
    gallery = Gallery(url=settings.gallery_url, data_dir=settings.data_dir, lease_seconds=settings.lease_seconds)
    studio = Studio(settings=settings, gallery=gallery, engine=pool)
    try:
        queued = [studio.enqueue(_request(90 + n), user="ada") for n in range(2)]
        queued += [studio.enqueue(_request(95 + n), user="bob") for n in range(2)]
        studio.workers.start()
        ids = [record.id for record in queued]
        wait_until(lambda: all(gallery.get(i).status == "succeeded" for i in ids), what="four jobs", timeout=300)
        records = [gallery.get(i) for i in ids]
        assert gallery.count() == 4
        assert sorted(record.user for record in records) == ["ada", "ada", "bob", "bob"]
        assert all(len(record.outputs) == 1 and gallery.path(record.outputs[0].path).is_file() for record in records)
        assert all("replica" in record.environment for record in records)
    finally:
        studio.close()


def test_a_replica_killed_before_the_first_step_runs_its_job_once_on_another(tmp_path, pool, ray_cluster):
    studio = _studio(tmp_path, pool)
    try:
        # 256 x 256 on one thread: a second before the first step, time to kill its replica once it has started.
        record = studio.enqueue(_request(80, steps=2, size=256), user="ada")
        pool.last_started = {}
        studio.workers.start()
        wait_until(lambda: pool.last_started, what="the job to start on a replica", timeout=120)
        killed = dict(pool.last_started)
        os.kill(killed["pid"], signal.SIGKILL)
        wait_until(
            lambda: studio.gallery.get(record.id).status not in ("queued", "running"), what="the job", timeout=300
        )
        ended = studio.gallery.get(record.id)
        # Nothing had come back from the dead replica: the job ran again, on the other one, as the same row.
        assert ended.status == "succeeded", ended.error
        assert ended.environment["replica"] != killed["replica"]
        assert studio.gallery.count() == 1
        assert len(ended.outputs) == 1
    finally:
        studio.close()


# Last in the module: it deploys the pool again with one replica, as `atelier serve` is told to.
def test_atelier_serve_on_the_pool_serves_every_tab(tmp_path, ray_cluster):
    from gradio_client import Client, handle_file
    from PIL import Image

    from pipelines.embedded.world import Scene, render

    data, port = tmp_path / "data", free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ATELIER_USER": "ada",
        "ATELIER_RAY_THREADS": "1",
        "ATELIER_RAY_MIN_REPLICAS": "1",
        "ATELIER_RAY_MAX_REPLICAS": "1",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = tmp_path / "serve.log"
    command = [str(ATELIER), "serve", "--data", str(data), "--port", str(port)]
    command += ["--executor", "ray", "--ray-address", ray_cluster]
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        assert server.poll() is None, f"atelier serve exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(url, timeout=2).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, what="atelier serve on the pool", timeout=300)
        client = Client(url, verbose=False)

        def picture(name: str, shape: str, colour: str, background: str) -> dict:
            path = tmp_path / name
            Image.fromarray(render(Scene(shape, colour, background, 0.22, 0.5, 0.5))).save(path)
            return handle_file(str(path))

        settings = ["Euler", 3, 5.0, 7, 1, 0, 0]  # sampler, steps, guidance, seed, batch, width, height
        photo = picture("photo.png", "square", "red", "blue")
        control = picture("control.png", "circle", "white", "black")
        empty_editor = {"background": None, "layers": [], "composite": None}
        calls = {
            "/txt2img": ["a red circle on a blue background", "", "Euler", 3, 5.0, 64, 64, 7, 1],
            "/img2img": [photo, "a red square on a white background", "", 0.8, "fit", *settings],
            "/inpaint": [photo, empty_editor, "auto", "a red square on a green background", "", 0, 4, 0, 1.0, *settings],
            "/controlnet": [
                control, "canny", 100, 200, "embedded-canny", 1.0, 0.0, 1.0, None, "canny", "embedded-canny", 1.0,
                None, None, 0.75, "fit", "a red circle on a blue background", "", *settings,
            ],
        }  # fmt: skip
        ids = {}
        for api_name, arguments in calls.items():
            images, _, details = client.predict(*arguments, api_name=api_name)
            assert images and details["status"] == "succeeded", (api_name, details)
            ids[api_name] = details["id"]
        # Each record says where it ran: the one replica's node and id.
        with sqlite3.connect(f"file:{data / 'gallery.db'}?mode=ro", uri=True, timeout=10) as connection:
            rows = connection.execute("SELECT id, task, status, environment FROM generations ORDER BY id").fetchall()
        assert [(row[0], row[1], row[2]) for row in rows] == [
            (ids[f"/{task}"], task, "succeeded") for task in ("txt2img", "img2img", "inpaint", "controlnet")
        ]
        environments = [json.loads(row[3]) for row in rows]
        assert all(environment["node"] and environment["replica"] for environment in environments)
        assert len({environment["replica"] for environment in environments}) == 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
