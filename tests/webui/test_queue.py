"""The studio's queue: GPU workers, a session's place in line and its own progress, cancel, queue full, requeue.

The first tests drive the workers as the UI does (`Studio.workers.enqueue`,
then the ticket's `wait`); the rest go through a launched app with
accounts, called the way a browser tab or an API client calls it. A `Gate`
holds a run whose prompt starts with "hold" before its first step, so a test
decides when the GPU is busy instead of guessing how long a run takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from pipelines.requests import ImageRef, Img2ImgRequest, Text2ImgRequest
from storage import Gallery, NewGeneration, Users
from webui.app import launch
from webui.jobs import ordinal
from webui.settings import Settings, SettingsError
from webui.studio import QueueFull, Studio
from webui.workers import JobFailed

from .conftest import free_port, wait_until

PASSWORDS = {"ann": "ann's password", "bob": "bob's password", "root": "root's password"}


class Gate:
    """Holds each run whose prompt starts with "hold" before its first step, until released or cancelled."""

    def __init__(self, studio: Studio) -> None:
        self.holding = threading.Event()
        self.released = threading.Event()
        engine = studio.engine
        self._run = engine.run
        engine.run = self.run  # the instance's attribute, so only this studio's engine is held

    def run(self, request, *, progress=None, cancel=None, preview=None):
        if request.prompt.startswith("hold"):
            self.holding.set()
            while not self.released.wait(0.02):
                if cancel is not None and cancel.cancelled:
                    break
        return self._run(request, progress=progress, cancel=cancel, preview=preview)

    def reset(self) -> None:
        self.holding.clear()
        self.released.clear()


def txt2img(prompt: str, *, steps: int = 3, seed: int = 1) -> Text2ImgRequest:
    return Text2ImgRequest(prompt=prompt, width=64, height=64, num_inference_steps=steps, seed=seed, sampler="Euler")


def files_under(data_dir: Path, folder: str) -> list[str]:
    return sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / folder).rglob("*") if p.is_file())


# -- settings ------------------------------------------------------------------------------


def test_lease_and_queue_limit_come_from_the_environment(tmp_path: Path) -> None:
    environ = {"ATELIER_LEASE_SECONDS": "2.5", "ATELIER_QUEUE_LIMIT": "7", "ATELIER_DATA_DIR": str(tmp_path / "d")}
    settings = Settings.from_env(environ, env_file=None)
    assert (settings.lease_seconds, settings.queue_limit) == (2.5, 7)
    assert Settings.from_env({}, env_file=None).lease_seconds == 30.0
    assert Settings.from_env({}, env_file=None).queue_limit == 100
    studio = Studio.from_settings(settings)
    try:
        assert studio.gallery.lease_seconds == 2.5
    finally:
        studio.close()
    for name, value, message in [
        ("ATELIER_LEASE_SECONDS", "soon", "ATELIER_LEASE_SECONDS must be a number; got 'soon'."),
        ("ATELIER_LEASE_SECONDS", "0", "ATELIER_LEASE_SECONDS must be more than 0 seconds; got 0."),
        ("ATELIER_QUEUE_LIMIT", "0", "ATELIER_QUEUE_LIMIT must be at least 1; got 0."),
    ]:
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({name: value}, env_file=None)
        assert str(refused.value) == message


# -- the workers, as the UI drives them ----------------------------------------------------


def test_a_queued_image_task_runs_on_a_worker_and_keeps_its_input_once(studio: Studio) -> None:
    photo = Image.new("RGB", (64, 64), (200, 30, 30))
    request = Img2ImgRequest(
        prompt="a red circle on a blue background",
        image=ImageRef.of(photo),
        strength=0.6,
        num_inference_steps=4,
        seed=5,
    )
    ticket = studio.workers.enqueue(request, user="ada")
    # The input is in the record from the moment it is queued: a worker in any process can read it.
    queued = studio.gallery.get(ticket.generation_id)
    assert [(i.role, i.position) for i in queued.images] == [("input", 0)]

    steps: list[tuple[int, int]] = []
    record = ticket.wait(studio.gallery, waiting=lambda place: None, progress=lambda s, t: steps.append((s, t)))

    assert record.status == "succeeded" and record.user == "ada"
    assert sorted((i.role, i.position) for i in record.images) == [("input", 0), ("output", 0)]
    assert [i.sha256 for i in record.images if i.role == "input"] == [queued.images[0].sha256]
    assert record.model_revision == studio.engine.load("embedded").revision
    assert record.timings["wait_ms"] >= 0 and record.timings["run_ms"] > 0
    assert steps and steps[-1][0] == steps[-1][1]  # the last step reported is the last step
    assert studio.gallery.path(record.outputs[0].path).is_file()
    assert files_under(studio.settings.data_dir, "pending") == []


def test_a_full_queue_refuses_with_a_clear_message_and_writes_nothing(tmp_path: Path) -> None:
    studio = Studio.from_settings(Settings(data_dir=tmp_path / "data", user="ada", queue_limit=2))
    try:
        for seed in (1, 2):
            studio.enqueue(txt2img("a red circle", seed=seed), user="ada")
        with pytest.raises(QueueFull, match=r"^The queue is full \(2 jobs waiting\); try again in a minute\.$"):
            studio.enqueue(txt2img("a blue circle", seed=3), user="bob")
        assert studio.gallery.count() == 2
    finally:
        studio.close()


def test_jobs_queued_before_a_restart_run_when_the_workers_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", user="ada")
    before = Studio.from_settings(settings)
    queued = [before.enqueue(txt2img("a red circle", seed=seed), user="ada").id for seed in (1, 2)]
    before.close()  # the server stops with two jobs waiting

    after = Studio.from_settings(settings)
    try:
        after.workers.start()
        wait_until(lambda: all(after.gallery.get(i).status == "succeeded" for i in queued), what="the queued jobs")
        assert [len(after.gallery.get(i).outputs) for i in queued] == [1, 1]
    finally:
        after.close()


def test_a_model_that_does_not_load_fails_the_job_with_its_message(studio: Studio, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    ticket = studio.workers.enqueue(txt2img("a red circle").replace(model=str(broken)), user="ada")

    with pytest.raises(JobFailed, match="could not be loaded") as failed:
        ticket.wait(studio.gallery, waiting=lambda place: None, progress=None)

    record = studio.gallery.get(ticket.generation_id)
    assert record.status == "failed" and record.error == str(failed.value)
    assert record.images == ()


def test_a_stored_request_that_no_longer_validates_fails_the_job_with_its_message(studio: Studio) -> None:
    params = {**txt2img("a red circle").to_dict(), "sampler": "a sampler that was removed"}
    studio.gallery.enqueue(NewGeneration(
        user="ada", task="txt2img", model="embedded", params=params, prompt="a red circle", negative_prompt="",
        seed=1, sampler="a sampler that was removed", num_inference_steps=3, guidance_scale=5.0, width=64,
        height=64, batch_size=1,
    ))  # fmt: skip
    studio.workers.start()
    wait_until(lambda: studio.gallery.list()[0].status == "failed", what="the job to fail")
    assert studio.gallery.list()[0].error.startswith("sampler must be one of")


def test_a_run_whose_lease_ran_out_tells_the_waiting_user_it_was_interrupted(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = studio.engine
    run = engine.run

    def stall(request, **kwargs):
        result = run(request, **kwargs)
        # As if this process had stalled for longer than a lease: another reader marked the job interrupted.
        studio.gallery.expire_leases(datetime.now(timezone.utc) + timedelta(seconds=studio.gallery.lease_seconds + 1))
        return result

    monkeypatch.setattr(engine, "run", stall)
    ticket = studio.workers.enqueue(txt2img("a red circle"), user="ada")

    with pytest.raises(JobFailed, match=rf"^Generation {ticket.generation_id} was interrupted: .*Requeue it"):
        ticket.wait(studio.gallery, waiting=lambda place: None, progress=None)

    record = studio.gallery.get(ticket.generation_id)
    assert record.status == "interrupted" and record.images == ()
    assert files_under(studio.settings.data_dir, "images") == files_under(studio.settings.data_dir, "pending") == []
    # The worker goes on with the next job.
    monkeypatch.setattr(engine, "run", run)
    again = studio.workers.enqueue(txt2img("a blue circle"), user="ada")
    assert again.wait(studio.gallery, waiting=lambda place: None, progress=None).status == "succeeded"


def test_cancel_ends_a_waiting_job_at_once_and_a_running_one_at_its_next_step(studio: Studio) -> None:
    gate = Gate(studio)
    running = studio.workers.enqueue(txt2img("hold a red circle"), user="ada")
    assert gate.holding.wait(60)
    waiting = studio.workers.enqueue(txt2img("a blue circle"), user="ada")
    places: list[int] = []

    said = studio.workers.cancel(waiting, by="ada", is_admin=False)
    assert said == f"Cancelled generation {waiting.generation_id} before it started."
    record = waiting.wait(studio.gallery, waiting=places.append, progress=None)
    assert record.status == "cancelled" and record.started_at is None

    assert studio.workers.cancel(running, by="ada", is_admin=False) == "Cancelling at the next step…"
    record = running.wait(studio.gallery, waiting=places.append, progress=None)
    assert record.status == "cancelled" and record.images == ()
    assert files_under(studio.settings.data_dir, "images") == []


def test_ordinal_places() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th",
    ]  # fmt: skip


# -- the launched app, with accounts ---------------------------------------------------------


@dataclass
class Served:
    studio: Studio
    url: str
    gate: Gate
    clients: list[Client] = field(default_factory=list)

    def client(self, name: str) -> Client:
        """A new session (a browser tab) logged in as `name`."""
        client = Client(self.url, auth=(name, PASSWORDS[name]), verbose=False)
        self.clients.append(client)
        return client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("queue"), user="ada", port=free_port(), queue_limit=3)
    with Users(url=settings.gallery_url) as users:
        for name, password in PASSWORDS.items():
            users.add_user(name, password, admin=name == "root")
    studio = Studio.from_settings(settings)
    gate = Gate(studio)
    app = launch(studio, prevent_thread_lock=True, quiet=True)
    served = Served(studio, f"http://127.0.0.1:{settings.port}/", gate)
    yield served
    for client in served.clients:
        client.close()
    app.close()
    studio.close()


@pytest.fixture
def server(served: Served) -> Iterator[Served]:
    served.gate.reset()
    yield served
    # Whatever a test left held runs out, so the next test starts with an idle GPU.
    served.gate.released.set()
    wait_until(
        lambda: served.studio.gallery.count(status="queued") + served.studio.gallery.count(status="running") == 0,
        what="the queue to empty",
    )


class Watch:
    """Every progress message a job's client receives, read on a thread until the job is done."""

    def __init__(self, job) -> None:
        self.job = job
        self.units: list[tuple[str | None, int | None, int | None]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self.job.done():
            for unit in self.job.status().progress_data or ():
                seen = (unit.desc, unit.index, unit.length)
                if not self.units or self.units[-1] != seen:
                    self.units.append(seen)
            time.sleep(0.01)

    def result(self):
        value = self.job.result(timeout=120)
        self._thread.join(5)
        return value

    def descriptions(self) -> set[str | None]:
        return {desc for desc, _, _ in self.units}


def test_a_waiting_session_sees_its_place_then_only_its_own_steps(server: Served) -> None:
    ann, bob = server.client("ann"), server.client("bob")
    held = Watch(ann.submit("hold a red circle", "", "Euler", 3, 5.0, 64, 64, 1, 1, api_name="/txt2img"))
    assert server.gate.holding.wait(60)
    waiting = Watch(bob.submit("a blue square", "", "Euler", 5, 5.0, 64, 64, 2, 1, api_name="/txt2img"))
    wait_until(lambda: "Waiting: 1st in line" in waiting.descriptions(), what="bob's place in line")

    server.gate.released.set()
    *_, ann_details = held.result()
    *_, bob_details = waiting.result()

    # Each session got its own record, and only its own job's steps: 3 for ann, 5 for bob.
    assert server.studio.gallery.get(ann_details["id"]).user == "ann"
    assert server.studio.gallery.get(bob_details["id"]).user == "bob"
    assert {length for desc, _, length in held.units if desc == "Denoising"} == {3}
    assert {length for desc, _, length in waiting.units if desc == "Denoising"} == {5}
    # Ann's job may be seen as first in line for the moment before the worker takes it; never behind bob's.
    assert {desc for desc in held.descriptions() if desc and desc.startswith("Waiting")} <= {"Waiting: 1st in line"}


def test_cancel_reaches_only_the_jobs_of_the_session_that_pressed_it(server: Served) -> None:
    gallery = server.studio.gallery
    ann = server.client("ann")
    ann_other_tab, bob = server.client("ann"), server.client("bob")
    running = ann.submit("hold a green circle", "", "Euler", 3, 5.0, 64, 64, 1, 1, api_name="/txt2img")
    assert server.gate.holding.wait(60)
    queued = ann.submit("a green square", "", "Euler", 3, 5.0, 64, 64, 2, 1, api_name="/txt2img")
    wait_until(lambda: gallery.count(status="queued") == 1, what="ann's second job to queue")
    [waiting_id] = [r.id for r in gallery.list(status="queued")]
    [running_id] = [r.id for r in gallery.list(status="running")]

    # Another user's tab, and another tab of the same user, press Cancel: nothing of ann's first tab stops.
    bob.predict(api_name="/cancel")
    ann_other_tab.predict(api_name="/cancel")
    time.sleep(0.5)
    assert (gallery.get(running_id).status, gallery.get(waiting_id).status) == ("running", "queued")

    ann.predict(api_name="/cancel")
    _, summary, details = queued.result(timeout=60)
    assert details["id"] == waiting_id and summary == f"**Record #{waiting_id}** · cancelled"
    _, summary, details = running.result(timeout=60)
    assert details["id"] == running_id and summary == f"**Record #{running_id}** · cancelled"
    assert gallery.get(waiting_id).started_at is None  # it never ran


def test_a_full_queue_is_one_clear_message_and_writes_nothing(server: Served) -> None:
    gallery = server.studio.gallery
    ann, bob = server.client("ann"), server.client("bob")
    held = ann.submit("hold a red circle", "", "Euler", 2, 5.0, 64, 64, 1, 1, api_name="/txt2img")
    assert server.gate.holding.wait(60)
    waiting = [
        bob.submit(f"a blue square {n}", "", "Euler", 2, 5.0, 64, 64, n, 1, api_name="/txt2img") for n in range(3)
    ]
    wait_until(lambda: gallery.count(status="queued") == 3, what="three queued jobs")
    before = gallery.count()

    with pytest.raises(AppError, match=r"The queue is full \(3 jobs waiting\); try again in a minute\."):
        server.client("bob").predict("one too many", "", "Euler", 2, 5.0, 64, 64, 9, 1, api_name="/txt2img")
    assert gallery.count() == before

    server.gate.released.set()
    for job in (held, *waiting):
        *_, details = job.result(timeout=120)
        assert gallery.get(details["id"]).status == "succeeded"


def test_queued_and_interrupted_jobs_have_tiles_and_only_the_owner_or_an_admin_requeues(
    server: Served, tmp_path: Path
) -> None:
    studio = server.studio
    settings = studio.settings
    # A job whose process died: it started under a short lease that nobody renews any more.
    request = txt2img("an interrupted yellow circle", seed=3)
    dead = Gallery(url=settings.gallery_url, data_dir=settings.data_dir, lease_seconds=0.2)
    lost = dead.start(NewGeneration(
        user="bob", task="txt2img", model="embedded", params=request.to_dict(), prompt=request.prompt,
        negative_prompt="", seed=3, sampler="Euler", num_inference_steps=3, guidance_scale=request.guidance_scale,
        width=64, height=64, batch_size=1,
    ))  # fmt: skip
    dead.close()
    time.sleep(0.3)
    bob = server.client("bob")

    search = ["yellow circle", "everyone", "", "", "any", "any", False, "", "any", "", ""]
    items, info = bob.predict(*search, "interrupted", api_name="/gallery_search")
    assert [item["caption"] for item in items] == [f"#{lost.id} · an interrupted yellow circle"]
    assert Path(items[0]["image"]).stat().st_size > 0  # a placeholder tile, since it has no image
    assert studio.gallery.get(lost.id).status == "interrupted"

    with pytest.raises(AppError, match=rf"Only bob or an admin may requeue generation {lost.id}\."):
        server.client("ann").predict(lost.id, api_name="/requeue")

    # While the GPU is busy the requeued job waits, and the Status filter shows it as queued.
    held = server.client("ann").submit("hold a red circle", "", "Euler", 2, 5.0, 64, 64, 1, 1, api_name="/txt2img")
    assert server.gate.holding.wait(60)
    again_id, *_, description, family, _, verdict, _, _ = bob.predict(lost.id, api_name="/requeue")
    assert verdict.startswith(f"Queued again as #{again_id}, a child of #{lost.id}")
    assert "**queued** (1st in line)" in description and f"Rerun of** #{lost.id}" in family
    items, _ = bob.predict(*search, "queued", api_name="/gallery_search")
    assert [item["caption"] for item in items] == [f"#{again_id} · an interrupted yellow circle"]
    with pytest.raises(AppError, match=rf"already queued again as generation {again_id}"):
        server.client("root").predict(lost.id, api_name="/requeue")

    server.gate.released.set()
    held.result(timeout=120)
    wait_until(lambda: studio.gallery.get(again_id).status == "succeeded", what="the requeued job")
    again = studio.gallery.get(again_id)
    assert again.user == "bob" and again.parent_id == lost.id and len(again.outputs) == 1
    # An admin may requeue anyone's; a succeeded one is not requeued.
    with pytest.raises(AppError, match=rf"Generation {again_id} is succeeded; only an interrupted"):
        server.client("root").predict(again_id, api_name="/requeue")
