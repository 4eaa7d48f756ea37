"""Faults: the server killed mid-generation, the GPU out of memory, the data folder full or read-only.

What each test checks is what a person would see: the message, the gallery's
rows and the files in the data folder, and that the next request works.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

import storage.files
from pipelines.requests import ImageRef, Img2ImgRequest
from webui.app import launch
from webui.settings import Settings
from webui.studio import OUT_OF_MEMORY, Studio, StudioError

from .conftest import free_port, wait_until

ATELIER = Path(sys.executable).with_name("atelier")


def files_under(data: Path, *folders: str) -> list[str]:
    found = (p for folder in folders for p in (data / folder).rglob("*") if p.is_file())
    return sorted(p.relative_to(data).as_posix() for p in found)


def rows(data: Path, query: str) -> list[tuple]:
    """Read the gallery as a bystander: a read-only SQLite connection that changes nothing."""
    with sqlite3.connect(f"file:{data / 'gallery.db'}?mode=ro", uri=True, timeout=10) as connection:
        return connection.execute(query).fetchall()


# -- kill -9 ------------------------------------------------------------------------------------


def serve(data: Path, port: int) -> subprocess.Popen:
    """`atelier serve` in its own process, with a two-second lease; returns once the page answers."""
    env = {
        **os.environ,
        "ATELIER_LEASE_SECONDS": "2",
        "ATELIER_USER": "ada",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    server = subprocess.Popen(
        [str(ATELIER), "serve", "--data", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        assert server.poll() is None, f"atelier serve exited with {server.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).is_success
        except httpx.HTTPError:
            return False

    wait_until(answers, what="the server to answer")
    return server


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for server in started:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def test_kill_9_in_the_middle_of_a_generation_then_restart(tmp_path: Path, servers: list[subprocess.Popen]) -> None:
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}/"
    servers.append(serve(data, port))
    client = Client(url, verbose=False)
    # A slow run (256 x 256 on the embedded model: about a second a step here) and one queued behind it.
    slow = client.submit("a red circle on a blue background", "", "Euler", 60, 5.0, 256, 256, 7, 1, api_name="/txt2img")
    Client(url, verbose=False).submit("a blue square", "", "Euler", 3, 5.0, 64, 64, 8, 1, api_name="/txt2img")

    def denoising() -> bool:
        units = slow.status().progress_data or ()
        return any(unit.desc == "Denoising" and (unit.index or 0) >= 2 for unit in units)

    wait_until(denoising, what="the slow run's second step")
    assert rows(data, "SELECT id, status FROM generations ORDER BY id") == [(1, "running"), (2, "queued")]
    servers[0].kill()  # SIGKILL: no handler, no cleanup, no last word
    servers[0].wait()

    # 1. Right after: no file of the run anywhere, the database whole, the job not yet known to be gone.
    assert files_under(data, "images", "thumbs", "pending") == []
    assert rows(data, "PRAGMA integrity_check") == [("ok",)]
    assert rows(data, "SELECT id, status FROM generations ORDER BY id") == [(1, "running"), (2, "queued")]

    # 2. Restart (the two-second lease has run out by the time it answers): the killed
    #    run reads as interrupted, and the job queued before the kill runs.
    servers.append(serve(data, port))
    client = Client(url, verbose=False)
    _, _, _, _, description, *_ = client.predict(1, api_name="/gallery_record")
    assert "**interrupted**" in description
    assert "Interrupted: the process running it stopped renewing its lease." in description

    def second_job_done() -> bool:
        return rows(data, "SELECT status FROM generations WHERE id = 2") == [("succeeded",)]

    wait_until(second_job_done, what="the job queued before the kill")
    assert rows(data, "SELECT generation_id, role FROM images ORDER BY id") == [(2, "output")]
    [(sha,)] = rows(data, "SELECT sha256 FROM images")
    assert files_under(data, "images", "thumbs", "pending") == [
        f"images/{sha[:2]}/{sha}.png", f"thumbs/{sha[:2]}/{sha}.webp",
    ]  # fmt: skip
    assert rows(data, "PRAGMA integrity_check") == [("ok",)]
    assert rows(data, "SELECT count(*) FROM images WHERE generation_id = 1") == [(0,)]


# -- out of GPU memory, a full or read-only data folder ------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Studio, Client]]:
    settings = Settings(data_dir=tmp_path / "data", user="ada", port=free_port())
    studio = Studio.from_settings(settings)
    app = launch(studio, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
    yield studio, client
    client.close()
    app.close()
    studio.close()


def generate(client: Client, prompt: str, seed: int = 1):
    return client.predict(prompt, "", "Euler", 3, 5.0, 64, 64, seed, 1, api_name="/txt2img")


def test_out_of_gpu_memory_is_a_clear_message_frees_the_caches_and_the_next_request_runs(
    served: tuple[Studio, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    studio, client = served
    prompt = "a red circle on a blue background"
    generate(client, prompt)  # the prompt's embedding is now cached
    engine = studio.engine
    unet = engine.pipeline("embedded", "txt2img").unet
    forward = unet.forward
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def out_of_memory_once(*args, **kwargs):
        unet.forward = forward  # the next call works again
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    unet.forward = out_of_memory_once
    try:
        with pytest.raises(AppError) as refused:
            generate(client, prompt, seed=2)
        assert OUT_OF_MEMORY in str(refused.value)
    finally:
        unet.forward = forward
    [failed] = studio.gallery.list(limit=1)
    assert (failed.status, failed.error, failed.images) == ("failed", OUT_OF_MEMORY, ())
    # The engine let go of what it keeps between runs: the cached embedding is encoded again.
    misses = engine.text_cache.misses
    *_, details = generate(client, prompt, seed=3)
    assert engine.text_cache.misses == misses + 1
    assert studio.gallery.get(details["id"]).status == "succeeded"
    assert emptied == ([True] if engine.device.type == "cuda" else [])


class FullDisk:
    """What `open` gives storage.files while the disk is full: files that take no bytes."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return handle
        code = self.code

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data):
                raise OSError(code, os.strerror(code))

            def __getattr__(self, name):
                return getattr(handle, name)

        return Full()


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "is full"), (errno.EROFS, "is read-only")])
def test_a_full_or_read_only_data_folder_is_a_clear_message_and_nothing_half_written(
    served: tuple[Studio, Client], monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    studio, client = served
    data = studio.settings.data_dir
    # Tests run as root, where a read-only folder still takes writes: the write itself fails instead.
    monkeypatch.setattr(storage.files, "open", FullDisk(code), raising=False)
    message = (
        f"Could not store the images: the data folder {reason} ({os.strerror(code)}); nothing was kept. "
        "Free some space or fix the folder's permissions, then run it again."
    )

    with pytest.raises(AppError) as refused:
        generate(client, "a red circle on a blue background")
    assert message in str(refused.value)
    [failed] = studio.gallery.list(limit=1)
    assert (failed.status, failed.error, failed.images) == ("failed", message, ())
    assert files_under(data, "images", "thumbs", "pending") == []

    # An image task's input is stored when it is queued: refused there, with no row at all.
    photo = Image.new("RGB", (64, 64), "green")
    before = studio.gallery.count()
    with pytest.raises(StudioError, match=rf"^Could not queue the request: the data folder {reason}"):
        studio.enqueue(Img2ImgRequest(prompt="a green square", image=ImageRef.of(photo)), user="ada")
    assert studio.gallery.count() == before
    assert files_under(data, "images", "thumbs", "pending") == []

    # Space again: the next request lands whole.
    monkeypatch.undo()
    *_, details = generate(client, "a red circle on a blue background", seed=2)
    record = studio.gallery.get(details["id"])
    assert record.status == "succeeded"
    sha = record.outputs[0].sha256
    assert files_under(data, "images", "thumbs", "pending") == [
        f"images/{sha[:2]}/{sha}.png", f"thumbs/{sha[:2]}/{sha}.webp",
    ]  # fmt: skip
