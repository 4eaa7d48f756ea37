"""The job queue: fair order, leases, interruption, requeue, cancel, restart, and migration 0004.

The tests run on SQLite and on PostgreSQL (conftest's `db_url`), except the
two that wait for the lease keeper in real time, which run on SQLite alone.
Elsewhere time is a `Clock` the galleries share, moved by hand, so a lease
runs out exactly when a test says; leases are long (`LEASE`) in real seconds,
so the keeper's own renewals never land inside a test.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine, MetaData, Table, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from storage import Gallery, GenerationRecord, ImageInput, LeaseLost, NewGeneration, NotAllowed, StorageError
from storage.db import downgrade, make_engine, upgrade
from storage.queue import claim_order

NewFactory = Callable[..., NewGeneration]
REPO = Path(__file__).resolve().parents[2]
LEASE = 600.0  # seconds; a tenth of an hour of real time before the keeper renews anything


class Clock:
    """A clock that moves a millisecond each time it is read, and jumps when told."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def opened(db_url: str, tmp_path: Path, clock: Clock) -> Iterator[Callable[[], Gallery]]:
    """Open galleries on one database and data folder, as separate processes would; all closed at the end."""
    galleries: list[Gallery] = []

    def open_one() -> Gallery:
        galleries.append(Gallery(url=db_url, data_dir=tmp_path, lease_seconds=LEASE, clock=clock))
        return galleries[-1]

    yield open_one
    for gallery in galleries:
        gallery.close()


@pytest.fixture
def g(opened: Callable[[], Gallery]) -> Gallery:
    return opened()


def enqueue(gallery: Gallery, new_generation: NewFactory, user: str, count: int = 1) -> list[int]:
    return [gallery.enqueue(new_generation(user=user, prompt=f"{user} {n}")).id for n in range(count)]


def claims(gallery: Gallery, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        record = gallery.claim_next()
        assert record is not None
        ids.append(record.id)
    return ids


def pending_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "pending").iterdir() if p.is_file()]


def image_files(data_dir: Path) -> set[str]:
    found = (p for folder in ("images", "thumbs", "pending") for p in (data_dir / folder).rglob("*"))
    return {p.relative_to(data_dir).as_posix() for p in found if p.is_file()}


def output(color: str, seed: int) -> ImageInput:
    return ImageInput("output", Image.new("RGB", (16, 16), color), seed=seed)


def finish(gallery: Gallery, generation_id: int, images: list[ImageInput]) -> GenerationRecord:
    return gallery.finish(generation_id, images=images, environment={}, timings={}, duration_ms=5)


# 1. Enqueue and order


def test_enqueue_records_a_job_that_waits_with_its_input_images(
    g: Gallery, new_generation: NewFactory, tmp_path: Path
) -> None:
    photo, mask = Image.new("RGB", (16, 16), "green"), Image.new("L", (16, 16), 255)
    new = new_generation(task="img2img")

    queued = g.enqueue(new, inputs=[ImageInput("input", photo), ImageInput("mask", mask)])

    assert queued.status == "queued"
    assert (queued.started_at, queued.finished_at, queued.lease_owner, queued.lease_expires_at) == (None,) * 4
    assert queued.params == new.params and queued.user == "ann"
    assert [(i.role, i.position) for i in queued.images] == [("input", 0), ("mask", 0)]
    assert {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*.png")} == {
        i.path for i in queued.images
    }
    assert pending_files(tmp_path) == []
    assert g.get(queued.id) == queued
    assert [r.id for r in g.list(status="queued")] == [queued.id]
    assert [r.id for r in g.search(status="queued").records] == [queued.id]
    assert g.count(status="queued") == 1


def test_enqueue_refuses_outputs_and_bad_input_writing_nothing(
    g: Gallery, new_generation: NewFactory, tmp_path: Path
) -> None:
    with pytest.raises(StorageError, match=r"^Image 1 is an output; a queued job takes only input"):
        g.enqueue(new_generation(), inputs=[output("red", 1)])
    with pytest.raises(StorageError, match=r"^Image 2 has mode CMYK"):
        g.enqueue(
            new_generation(),
            inputs=[ImageInput("input", Image.new("RGB", (4, 4))), ImageInput("input", Image.new("CMYK", (4, 4)))],
        )
    with pytest.raises(StorageError, match=r"^user must not be empty\.$"):
        g.enqueue(new_generation(user=""))

    assert g.count() == 0 and image_files(tmp_path) == set()


def test_claims_within_one_user_are_first_in_first_out(g: Gallery, new_generation: NewFactory) -> None:
    jobs = enqueue(g, new_generation, "ann", 5)

    assert claims(g, 5) == jobs
    assert g.claim_next() is None


def test_users_take_turns_so_a_big_batch_does_not_starve_a_small_one(g: Gallery, new_generation: NewFactory) -> None:
    ann = enqueue(g, new_generation, "ann", 100)
    bob = enqueue(g, new_generation, "bob", 2)
    listed = [r.id for r in g.queued(limit=1000)]

    claimed = claims(g, 102)

    # bob has never started a job, ann neither: the older job first, then turns.
    assert claimed[:5] == [ann[0], bob[0], ann[1], bob[1], ann[2]]
    assert claimed[5:] == ann[3:]
    assert listed == claimed  # the listing replays exactly what claims then do
    assert g.claim_next() is None


def test_whoever_started_a_job_last_goes_after_the_others(g: Gallery, new_generation: NewFactory) -> None:
    # carol's latest start is older than dave's, and eve has never started one.
    finish(g, g.start(new_generation(user="carol")).id, [])
    finish(g, g.start(new_generation(user="dave")).id, [])
    dave = enqueue(g, new_generation, "dave", 2)
    carol = enqueue(g, new_generation, "carol", 2)
    eve = enqueue(g, new_generation, "eve", 1)

    assert claims(g, 5) == [eve[0], carol[0], dave[0], carol[1], dave[1]]


def test_claim_order_replays_the_rule() -> None:
    t = datetime(2025, 1, 1, tzinfo=timezone.utc)
    queued = [(1, "ann"), (2, "ann"), (3, "bob"), (4, "cat"), (5, "ann"), (6, "cat")]

    assert claim_order(queued, {}) == [1, 3, 4, 2, 6, 5]
    assert claim_order(queued, {"ann": t, "bob": t + timedelta(1)}) == [4, 1, 3, 6, 2, 5]
    assert claim_order([], {}) == []


def test_two_galleries_claiming_at_once_never_take_the_same_job(
    opened: Callable[[], Gallery], new_generation: NewFactory
) -> None:
    first, second = opened(), opened()
    jobs = [first.enqueue(new_generation(user=f"user{n % 3}", prompt=f"job {n}")).id for n in range(50)]
    claimers = [first, first, second, second]  # two threads on each "process"
    taken: list[list[int]] = [[] for _ in claimers]
    errors: list[BaseException] = []
    go = threading.Barrier(len(claimers))

    def claim_all(gallery: Gallery, into: list[int]) -> None:
        try:
            go.wait()
            while (record := gallery.claim_next()) is not None:
                assert record.status == "running" and record.lease_owner == gallery.worker
                into.append(record.id)
        except BaseException as error:  # reported below: a thread's assert would vanish
            errors.append(error)

    threads = [threading.Thread(target=claim_all, args=(c, t)) for c, t in zip(claimers, taken, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    everything = [job for ids in taken for job in ids]
    assert Counter(everything) == Counter(jobs)  # each job claimed exactly once
    owners = {r.id: r.lease_owner for r in first.list(status="running", limit=100)}
    assert owners == {job: c.worker for c, ids in zip(claimers, taken, strict=True) for job in ids}
    assert first.count(status="queued") == 0


# 2. Leases


def test_an_expired_lease_reads_as_interrupted_and_a_live_one_is_left_alone(
    opened: Callable[[], Gallery], new_generation: NewFactory, clock: Clock
) -> None:
    worker, other, reader = opened(), opened(), opened()
    short, long = enqueue(worker, new_generation, "ann"), enqueue(worker, new_generation, "bob")
    assert worker.claim_next(lease_seconds=60).id == short[0]
    assert other.claim_next(lease_seconds=3600).id == long[0]
    clock.advance(59)
    assert reader.get(short[0]).status == "running"  # a live lease is never touched

    clock.advance(2)

    dead = reader.get(short[0])
    assert dead.status == "interrupted"
    assert dead.finished_at == dead.lease_expires_at and dead.lease_owner == worker.worker
    assert "stopped renewing its lease" in (dead.error or "")
    alive = reader.get(long[0])
    assert alive.status == "running" and alive.lease_owner == other.worker
    assert [r.id for r in reader.list(status="running")] == [long[0]]
    assert [r.id for r in reader.search(status="interrupted").records] == [short[0]]
    assert reader.expire_leases() == []  # marked once, by whoever read first


def test_every_reader_marks_expired_leases_first(
    opened: Callable[[], Gallery], new_generation: NewFactory, clock: Clock
) -> None:
    worker, reader = opened(), opened()
    job = worker.start(new_generation())
    clock.advance(LEASE + 1)

    assert [r.status for r in reader.search().records] == ["interrupted"]
    assert reader.count(status="running") == 0
    assert reader.expire_leases() == []
    with pytest.raises(StorageError, match="timezone-aware"):
        reader.expire_leases(datetime(2030, 1, 1))
    assert job.lease_expires_at is not None
    assert reader.expire_leases(job.lease_expires_at + timedelta(days=1)) == []


def test_a_heartbeat_keeps_a_lease_alive_and_only_its_worker_may_send_it(
    opened: Callable[[], Gallery], new_generation: NewFactory, clock: Clock
) -> None:
    worker, reader = opened(), opened()
    job = worker.enqueue(new_generation()).id
    worker.claim_next(worker="gpu0", lease_seconds=60)

    for _ in range(3):  # three minutes, on a one-minute lease
        clock.advance(50)
        deadline = worker.heartbeat(job, worker="gpu0", lease_seconds=60)
        assert reader.get(job).lease_expires_at == deadline
    clock.advance(50)
    assert reader.get(job).status == "running"

    with pytest.raises(LeaseLost, match=r"runs under gpu0's lease, not gpu1's"):
        reader.heartbeat(job, worker="gpu1")
    clock.advance(11)
    assert reader.get(job).status == "interrupted"
    with pytest.raises(LeaseLost, match=r"^Generation 1 is interrupted; gpu0 no longer holds its lease\.$"):
        worker.heartbeat(job, worker="gpu0")


def test_a_late_finish_after_the_lease_ran_out_is_refused_and_writes_no_file(
    opened: Callable[[], Gallery], new_generation: NewFactory, clock: Clock, tmp_path: Path
) -> None:
    worker, reader = opened(), opened()
    photo = Image.new("RGB", (16, 16), "green")
    job = worker.enqueue(new_generation(), inputs=[ImageInput("input", photo)]).id
    worker.claim_next()
    before = image_files(tmp_path)
    clock.advance(LEASE + 1)
    assert reader.get(job).status == "interrupted"

    with pytest.raises(LeaseLost, match=r"^Generation 1 was marked interrupted when its lease ran out at .* UTC; its"):
        finish(worker, job, [output("red", 1), output("blue", 2)])
    with pytest.raises(LeaseLost):
        worker.fail(job, status="cancelled", error=None, environment={}, timings={}, duration_ms=None)

    assert image_files(tmp_path) == before  # the inputs only, nothing pending
    record = reader.get(job)
    assert record.status == "interrupted" and [i.role for i in record.images] == ["input"]


def test_a_lease_that_ran_out_unseen_still_refuses_the_finish(
    g: Gallery, new_generation: NewFactory, clock: Clock, tmp_path: Path
) -> None:
    # No reader looked in between: the deadline decides, not who noticed.
    job = g.start(new_generation())
    clock.advance(LEASE + 1)

    with pytest.raises(LeaseLost):
        finish(g, job.id, [output("red", 1)])

    assert g.get(job.id).status == "interrupted"
    assert image_files(tmp_path) == set()


def test_a_finish_in_time_ends_a_claimed_job_after_its_inputs(
    g: Gallery, new_generation: NewFactory, clock: Clock
) -> None:
    photo = Image.new("RGB", (16, 16), "green")
    new = new_generation()
    job = g.enqueue(replace(new, model_revision=None), inputs=[ImageInput("input", photo)]).id
    claimed = g.claim_next()
    assert claimed is not None and claimed.started_at is not None
    clock.advance(LEASE - 1)

    done = g.finish(
        job,
        images=[output("red", 1), ImageInput("input", Image.new("RGB", (16, 16), "white"))],
        environment={"device": "cpu"},
        timings={},
        duration_ms=5,
        model_revision="0123abcd",  # known only once the worker has loaded the model
    )

    assert done.status == "succeeded" and done.finished_at is not None and done.model_revision == "0123abcd"
    assert [(i.role, i.position) for i in done.images] == [("output", 0), ("input", 0), ("input", 1)]
    with pytest.raises(StorageError, match=r"^Generation 1 is already succeeded; only a running one can end\.$"):
        finish(g, job, [])


CHILD = f"""
import os, sys
from storage import Gallery, NewGeneration
url, data_dir, how = sys.argv[1], sys.argv[2], sys.argv[3]
params = dict(task="txt2img", model="embedded", prompt="a red circle", negative_prompt="",
              num_inference_steps=2, sampler="Euler a", guidance_scale=7.0, seed=1,
              width=64, height=64, batch_size=1)
gallery = Gallery(url=url, data_dir=data_dir, lease_seconds={LEASE!r})
if how == "start":
    gallery.start(NewGeneration(user="ann", params=params, **params))
else:
    assert gallery.claim_next() is not None
os._exit(9)  # as if killed: no finish, no fail, no close
"""


@pytest.mark.parametrize("how", ["start", "claim"])
def test_a_killed_process_leaves_its_job_to_be_read_as_interrupted(
    db_url: str, tmp_path: Path, new_generation: NewFactory, how: str
) -> None:
    if how == "claim":
        with Gallery(url=db_url, data_dir=tmp_path) as gallery:
            gallery.enqueue(new_generation())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, str(tmp_path), how], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert child.returncode == 9, child.stderr

    # Right after: the lease has not run out, so nobody can tell the process is gone.
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        assert gallery.get(1).status == "running"
    # One lease later, the next reader knows.
    later = lambda: datetime.now(timezone.utc) + timedelta(seconds=LEASE + 1)  # noqa: E731
    with Gallery(url=db_url, data_dir=tmp_path, clock=later) as gallery:
        record = gallery.get(1)
        assert record.status == "interrupted" and record.images == ()
        assert record.lease_owner is not None and record.lease_owner.split(":")[1] != str(os.getpid())


def test_the_gallery_renews_its_leases_while_the_process_lives(tmp_path: Path, new_generation: NewFactory) -> None:
    # Real time, so SQLite alone (the heartbeat's SQL runs on both backends above):
    # a one-second lease, renewed every third of a second, outlives three of itself.
    url = f"sqlite:///{tmp_path}/gallery.db"
    with Gallery(url=url, data_dir=tmp_path) as reader:
        worker = Gallery(url=url, data_dir=tmp_path, lease_seconds=1.0)
        try:
            long_job = worker.start(new_generation(prompt="long"))
            stopped = worker.start(new_generation(prompt="stopped"))
            threading.Event().wait(3.0)
            assert reader.get(long_job.id).status == "running"
            assert finish(worker, long_job.id, [output("red", 1)]).status == "succeeded"
        finally:
            worker.close()  # the process goes away with `stopped` still running
        threading.Event().wait(1.6)
        assert reader.get(stopped.id).status == "interrupted"


def test_a_worker_that_lost_its_lease_stops_renewing_it(
    tmp_path: Path, new_generation: NewFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/gallery.db"
    with Gallery(url=url, data_dir=tmp_path, lease_seconds=0.6) as worker:
        job = worker.start(new_generation())
        later = lambda: datetime.now(timezone.utc) + timedelta(hours=1)  # noqa: E731
        with Gallery(url=url, data_dir=tmp_path, clock=later) as reader:
            assert reader.get(job.id).status == "interrupted"
        with caplog.at_level("WARNING", logger="storage.queue"):
            threading.Event().wait(0.5)  # the keeper's next renewal is refused
        assert [r.getMessage() for r in caplog.records] == [
            f"Generation {job.id} is interrupted; {worker.worker} no longer holds its lease."
        ]
        assert worker.get(job.id).status == "interrupted"


# A process killed while a queued job's inputs land: the row and its files together, or neither.
CRASH = """
import os, sys
from PIL import Image
from storage import Gallery, ImageInput, NewGeneration
from storage.files import FileStore
url, data_dir, step = sys.argv[1], sys.argv[2], sys.argv[3]
params = dict(task="img2img", model="embedded", prompt="a red circle", negative_prompt="",
              num_inference_steps=2, sampler="Euler a", guidance_scale=7.0, seed=1,
              width=64, height=64, batch_size=1)
original = getattr(FileStore, step)
def crashing(self, *args, **kwargs):
    if step == "land":
        os._exit(9)  # the row is committed, the files not yet in place
    original(self, *args, **kwargs)
    os._exit(9)  # the files are staged, nothing committed
setattr(FileStore, step, crashing)
gallery = Gallery(url=url, data_dir=data_dir)
gallery.enqueue(NewGeneration(user="ann", params=params, **params),
                inputs=[ImageInput("input", Image.new("RGB", (16, 16), "green"))])
"""


@pytest.mark.parametrize("step", ["stage", "land"])
def test_a_crash_while_enqueueing_leaves_the_job_and_its_inputs_whole_or_absent(
    db_url: str, tmp_path: Path, step: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", CRASH, db_url, str(tmp_path), step], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert child.returncode == 9, child.stderr
    assert pending_files(tmp_path) != []  # the crash left debris

    with Gallery(url=db_url, data_dir=tmp_path) as gallery:  # opening recovers
        jobs = gallery.queued()
        assert len(jobs) == (0 if step == "stage" else 1)
        named = {path for job in jobs for image in job.images for path in (image.path, image.thumb_path)}
        for job in jobs:
            image = job.images[0]
            assert hashlib.sha256(gallery.path(image.path).read_bytes()).hexdigest() == image.sha256
    assert image_files(tmp_path) == named


# 3. Requeue, cancel, restart, positions


def test_requeue_runs_an_interrupted_job_again_as_its_child(
    opened: Callable[[], Gallery], new_generation: NewFactory, clock: Clock, tmp_path: Path
) -> None:
    worker, studio = opened(), opened()
    photo = Image.new("RGB", (16, 16), "green")
    old = studio.enqueue(new_generation(task="img2img"), inputs=[ImageInput("input", photo)])
    worker.claim_next()
    clock.advance(LEASE + 1)
    files = image_files(tmp_path)

    with pytest.raises(NotAllowed, match=r"^Only ann or an admin may requeue generation 1\.$"):
        studio.requeue(old.id, by="bob", is_admin=False)
    again = studio.requeue(old.id, by="ann", is_admin=False)

    assert again.status == "queued" and again.parent_id == old.id and again.id != old.id
    assert (again.user, again.params, again.prompt, again.seed) == (old.user, old.params, old.prompt, old.seed)
    assert [(i.role, i.sha256, i.path) for i in again.images] == [(i.role, i.sha256, i.path) for i in old.images]
    assert image_files(tmp_path) == files  # the same files, named by a second row
    assert studio.get(old.id).status == "interrupted"  # the history stays as it happened
    assert [c.id for c in studio.children(old.id)] == [again.id]
    with pytest.raises(StorageError, match=r"^Generation 1 is already queued again as generation 2\.$"):
        studio.requeue(old.id, by="ann", is_admin=False)

    claimed = worker.claim_next()
    assert claimed is not None and claimed.id == again.id
    done = finish(worker, again.id, [output("red", 1)])
    assert [i.role for i in done.images] == ["output", "input"]


def test_requeue_takes_failed_and_cancelled_jobs_and_an_admin_may_requeue_anyones(
    g: Gallery, new_generation: NewFactory
) -> None:
    failed = g.start(new_generation())
    g.fail(failed.id, status="failed", error="CUDA out of memory", environment={}, timings={}, duration_ms=None)
    cancelled = g.enqueue(new_generation())
    g.cancel(cancelled.id, by="ann", is_admin=False)
    succeeded = g.start(new_generation())
    finish(g, succeeded.id, [])
    queued = g.enqueue(new_generation())

    assert g.requeue(failed.id, by="root", is_admin=True).user == "ann"
    assert g.requeue(cancelled.id, by="ann", is_admin=False).parent_id == cancelled.id
    for record in (succeeded, queued):
        status = g.get(record.id).status
        with pytest.raises(StorageError, match=rf"is {status}; only an interrupted, failed or cancelled one can be"):
            g.requeue(record.id, by="ann", is_admin=False)


def test_queued_jobs_survive_closing_and_reopening_the_gallery(
    db_url: str, tmp_path: Path, new_generation: NewFactory
) -> None:
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        ann = enqueue(gallery, new_generation, "ann", 2)
        bob = enqueue(gallery, new_generation, "bob", 1)
        before = [r.id for r in gallery.queued()]

    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        assert [r.id for r in gallery.queued()] == before == [ann[0], bob[0], ann[1]]
        assert gallery.queue_position(ann[1]) == 3
        assert claims(gallery, 3) == before


def test_cancel_of_a_queued_job_is_for_its_owner_or_an_admin(g: Gallery, new_generation: NewFactory) -> None:
    mine, theirs, third = enqueue(g, new_generation, "ann", 3)
    assert g.claim_next().id == mine

    with pytest.raises(NotAllowed, match=r"^Only ann or an admin may cancel generation 2\.$"):
        g.cancel(theirs, by="bob", is_admin=False)
    assert g.get(theirs).status == "queued"
    cancelled = g.cancel(theirs, by="ann", is_admin=False)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert g.cancel(third, by="root", is_admin=True).status == "cancelled"
    with pytest.raises(StorageError, match=r"^Generation 1 is running; only a queued one can be cancelled here\.$"):
        g.cancel(mine, by="ann", is_admin=False)
    with pytest.raises(StorageError, match=r"^Generation 2 is cancelled; only a queued one"):
        g.cancel(theirs, by="ann", is_admin=False)
    assert g.claim_next() is None  # cancelled jobs are never claimed


def test_queue_positions_follow_the_turns(g: Gallery, new_generation: NewFactory) -> None:
    ann = enqueue(g, new_generation, "ann", 3)
    bob = enqueue(g, new_generation, "bob", 1)

    assert [g.queue_position(job) for job in (*ann, *bob)] == [1, 3, 4, 2]
    assert [r.id for r in g.queued(limit=2)] == [ann[0], bob[0]]

    g.claim_next()  # ann's first: now bob is next, and ann waits for her turn
    assert [g.queue_position(job) for job in (ann[1], ann[2], bob[0])] == [2, 3, 1]
    with pytest.raises(StorageError, match=r"^Generation 1 is running, not queued\.$"):
        g.queue_position(ann[0])
    with pytest.raises(StorageError, match=r"^limit must be between 1 and 1000, not 0\.$"):
        g.queued(limit=0)


def test_a_live_job_cannot_be_deleted_but_an_interrupted_one_can(
    g: Gallery, new_generation: NewFactory, clock: Clock
) -> None:
    queued = g.enqueue(new_generation())
    running = g.start(new_generation())

    with pytest.raises(StorageError, match=r"^Generation 1 is still queued; cancel it before deleting it\.$"):
        g.delete(queued.id, by="ann", is_admin=False)
    with pytest.raises(StorageError, match=r"^Generation 2 is still running; cancel it before deleting it\.$"):
        g.delete(running.id, by="ann", is_admin=False)
    clock.advance(LEASE + 1)
    assert g.delete(running.id, by="ann", is_admin=False).status == "interrupted"


# 4. Migration 0004

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def generation_0003(n: int, *, status: str, parent_id: int | None = None) -> dict[str, Any]:
    return {
        # No id: the rows take 1, 2, 3 from the sequence, so later inserts on PostgreSQL go on from there.
        "created_at": T0 + timedelta(minutes=n), "finished_at": None if status == "running" else T0,
        "user": "ann", "task": "txt2img", "model": "embedded", "model_revision": "main",
        "params": {"task": "txt2img", "seed": n}, "prompt": f"castle {n}", "negative_prompt": "", "seed": n,
        "sampler": "Euler a", "num_inference_steps": 20, "guidance_scale": 7.0, "width": 64, "height": 64,
        "batch_size": 1, "status": status, "error": "boom" if status == "failed" else None, "duration_ms": None,
        "timings": {}, "environment": {}, "parent_id": parent_id, "starred": n == 1, "review": "none",
    }  # fmt: skip


def fill_0003(engine: Engine) -> tuple[Table, Table]:
    upgrade(engine, revision="0003")
    old = MetaData()
    old.reflect(engine, only=["generations", "images"])
    generations, images = old.tables["generations"], old.tables["images"]
    sha = "ab" * 32
    with engine.begin() as connection:
        connection.execute(
            insert(generations),
            [
                generation_0003(1, status="succeeded"),
                generation_0003(2, status="running", parent_id=1),
                generation_0003(3, status="failed"),
            ],
        )
        connection.execute(
            insert(images),
            {
                "generation_id": 1, "role": "output", "position": 0, "seed": 1, "sha256": sha,
                "path": f"images/ab/{sha}.png", "width": 64, "height": 64, "thumb_path": f"thumbs/ab/{sha}.webp",
                "created_at": T0,
            },
        )  # fmt: skip
    return generations, images


def rows(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(table).order_by(table.c.id))]


def insert_status(engine: Engine, status: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO generations (created_at, "user", task, model, params, prompt, negative_prompt, seed, '
                "sampler, num_inference_steps, guidance_scale, width, height, batch_size, status, timings, "
                "environment) VALUES (:t, 'ann', 'txt2img', 'embedded', '{}', 'p', '', 1, 'Euler a', 20, 7.0, "
                "64, 64, 1, :status, '{}', '{}')"
            ),
            {"t": T0, "status": status},
        )


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_0004_upgrades_a_0003_database_with_rows_and_downgrades_again(
    engine: Engine, db_url: str, tmp_path: Path, new_generation: NewFactory
) -> None:
    generations, images = fill_0003(engine)
    before = rows(engine, generations), rows(engine, images)

    upgrade(engine)

    assert (rows(engine, generations), rows(engine, images)) == before  # every 0003 column, unchanged
    with engine.connect() as connection:
        added = connection.execute(text("SELECT id, started_at, lease_owner, lease_expires_at FROM generations"))
        by_id = {row[0]: row[1:] for row in added}
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert all(started is not None for started, _, _ in by_id.values())  # started when made, as 0003 did
    assert [by_id[n][2] is not None for n in (1, 2, 3)] == [False, True, False]  # only the running one has a lease
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        # No 0003 process can renew a lease: its running job reads as interrupted.
        orphan = gallery.get(2)
        assert orphan.status == "interrupted" and orphan.started_at == T0 + timedelta(minutes=2)
        assert gallery.get(1).started_at == T0 + timedelta(minutes=1) and gallery.get(1).starred
        queued = gallery.enqueue(new_generation())
        assert gallery.claim_next() is not None and gallery.get(queued.id).status == "running"
        gallery.enqueue(new_generation(prompt="still waiting"))
    with pytest.raises(IntegrityError):
        insert_status(engine, "done")

    downgrade(engine, revision="0003")

    with engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("generations")}
        statuses = dict(connection.execute(text("SELECT id, status FROM generations")).tuples().all())
        errors = dict(connection.execute(text("SELECT id, error FROM generations")).tuples().all())
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert {"started_at", "lease_owner", "lease_expires_at"}.isdisjoint(columns)
    assert statuses == {1: "succeeded", 2: "failed", 3: "failed", 4: "running", 5: "cancelled"}
    assert "downgraded below revision 0004" in errors[2] and "downgraded below revision 0004" in errors[5]
    assert errors[3] == "boom"
    assert rows(engine, images) == before[1]
    with pytest.raises(IntegrityError):
        insert_status(engine, "queued")

    upgrade(engine)
    insert_status(engine, "queued")
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        assert [r.prompt for r in gallery.queued()] == ["p"]


# Release: a claimed job its executor could not take goes back in line


def test_a_released_job_waits_again_in_its_own_row_and_is_claimed_again(g: Gallery, new_generation: NewFactory) -> None:
    [job] = enqueue(g, new_generation, "ann")
    assert g.claim_next().id == job
    released = g.release(job)
    assert (released.id, released.status) == (job, "queued")
    assert (released.started_at, released.lease_owner, released.lease_expires_at) == (None, None, None)
    assert g.queue_position(job) == 1
    assert g.claim_next().id == job  # the same row, not a copy
    assert g.count() == 1


def test_a_job_whose_lease_ran_out_is_not_released_but_stays_interrupted(
    opened: Callable[[], Gallery], new_generation: NewFactory, clock: Clock
) -> None:
    worker = opened()
    [job] = enqueue(worker, new_generation, "ann")
    worker.claim_next(lease_seconds=60)
    clock.advance(61)
    with pytest.raises(LeaseLost):
        worker.release(job)
    assert worker.get(job).status == "interrupted"
