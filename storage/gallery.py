"""The gallery service: generation records and their image files, one short transaction per method."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import queue, search
from storage.db import make_engine, upgrade
from storage.files import PNG_MODES, FileStore, StagedImage
from storage.models import REVIEWS, ROLES, Base, Board, BoardItem, Generation, Image, Tag, utcnow
from storage.pngmeta import png_text_chunks
from storage.records import (
    BoardRecord,
    GenerationRecord,
    ImageInput,
    ImageRecord,
    LeaseLost,
    NewGeneration,
    NotAllowed,
    Page,
    RecordNotFound,
    StorageError,
)

log = logging.getLogger(__name__)

# What _write_with_files hands its writer: stage(generation_id, image, position=, text=) -> the image's row.
_Stage = Callable[..., Image]

_MAX_SEED = 2**63 - 1  # BIGINT is signed
_MAX_LIST = 1000
_MAX_BOARD_NAME = 100
_MAX_NOTE = 10_000
_END_STATUSES = ("failed", "cancelled")
_REQUEUE_STATUSES = ("interrupted", "failed", "cancelled")
_LIVE_STATUSES = ("queued", "running")


class Gallery:
    """Every generation and image a studio has made, in a database and a data folder.

    The default database is `sqlite:///<data_dir>/gallery.db`; PostgreSQL (for
    a team, with images on a shared folder) works the same. Full-text search
    and review state use features of those two (migration 0002), so other
    SQLAlchemy backends are not supported.

    Generations are also the jobs of the studio's queue (storage/queue.py says
    who goes next and when a job counts as gone): `enqueue` records one as
    "queued", `claim_next` hands the next one to a worker as "running", and
    `finish` or `fail` end it. `start` records one that runs at once, without
    waiting its turn. A running job holds a lease of `lease_seconds`, which
    this object renews on a thread for as long as the process lives; every
    reader first marks the jobs whose lease ran out "interrupted". `clock`
    tells the time for leases and queue timestamps; tests move it.
    """

    def __init__(
        self,
        *,
        url: str,
        data_dir: Path,
        lease_seconds: float = queue.LEASE_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.lease_seconds = queue.check_lease(lease_seconds)
        self.worker = queue.worker_id()  # the lease owner of the jobs this object starts
        self._clock = clock
        self.data_dir = Path(data_dir).resolve()
        self._files = FileStore(self.data_dir)
        self._engine = make_engine(url)
        upgrade(self._engine)
        # Stage, commit and land run under one lock so that two threads landing
        # identical bytes never write the same pending name at once (the file
        # lock in FileStore.landing is shared, so it does not exclude threads).
        self._landing = threading.Lock()
        self._leases = queue.LeaseKeeper(self._renew)
        self._recover()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop renewing leases (a job still running here is interrupted one lease later) and disconnect."""
        self._leases.close()
        self._engine.dispose()

    def start(self, new: NewGeneration) -> GenerationRecord:
        """Record a generation that is about to run, with status "running", under this gallery's lease."""
        params = _check_new(new)
        now = self._now()
        lease_expires_at = now + timedelta(seconds=self.lease_seconds)
        with Session(self._engine) as session, session.begin():
            _check_parent(session, new.parent_id)
            row = _generation_row(
                new, params, created_at=now, started_at=now, lease_owner=self.worker, lease_expires_at=lease_expires_at
            )
            session.add(row)
            session.flush()
            record = _record(row)
        self._leases.hold(record.id, worker=self.worker, lease_seconds=self.lease_seconds)
        return record

    def enqueue(self, new: NewGeneration, *, inputs: Sequence[ImageInput] = ()) -> GenerationRecord:
        """Record a generation that waits its turn, with status "queued"; nothing runs yet.

        `inputs` are the images the job will read (roles input, mask,
        control); they are stored now, with the row, so a worker in any
        process finds them in the record and the job survives a restart.
        """
        # 1. Check every input before anything is written.
        params = _check_new(new)
        _check_images(inputs)
        for number, item in enumerate(inputs, start=1):
            if item.role == "output":
                raise StorageError(
                    f"Image {number} is an output; a queued job takes only input, mask or control images."
                )
        now = self._now()

        # 2. The row and its input images land together. The files are staged
        #    before the first write, so SQLite's write lock is not held while
        #    images are encoded; the rows get the new id from the relationship.
        def write(session: Session, stage: _Stage) -> GenerationRecord:
            _check_parent(session, new.parent_id)
            rows = []
            positions: Counter[str] = Counter()
            for item in inputs:
                rows.append(stage(None, item, position=positions[item.role], text=None))
                positions[item.role] += 1
            row = _generation_row(new, params, status="queued", created_at=now, images=rows)
            session.add(row)
            session.flush()
            return self._load(session, row.id)

        return self._write_with_files(write)

    def claim_next(self, *, worker: str | None = None, lease_seconds: float | None = None) -> GenerationRecord | None:
        """Take the queued job whose turn it is (storage/queue.py) and mark it "running"; None when none waits.

        The lease goes to `worker` (this gallery's own id by default) for
        `lease_seconds` (this gallery's by default), and this gallery renews
        it until `finish` or `fail`. Two workers claiming at once, in any
        processes, never get the same job.
        """
        worker = self.worker if worker is None else search.check_text(worker, field="worker")
        lease = self.lease_seconds if lease_seconds is None else queue.check_lease(lease_seconds)
        while True:
            now = self._now()
            with Session(self._engine) as session, session.begin():
                head = session.scalar(queue.next_job())
                if head is None:
                    return None
                # Compare and set: of two workers that chose the same job, one wins
                # and the other looks again (each miss means a job went to someone).
                result = session.execute(
                    update(Generation)
                    .where(Generation.id == head, Generation.status == "queued")
                    .values(
                        status="running",
                        started_at=now,
                        lease_owner=worker,
                        lease_expires_at=now + timedelta(seconds=lease),
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                record = self._load(session, head)
            self._leases.hold(record.id, worker=worker, lease_seconds=lease)
            return record

    def heartbeat(self, generation_id: int, *, worker: str, lease_seconds: float | None = None) -> datetime:
        """Extend a running job's lease to `lease_seconds` from now; returns the new deadline.

        Raises LeaseLost when the job is not running under `worker`'s lease
        any more (its lease ran out and it was marked interrupted, or it
        ended). This gallery already renews the leases it hands out; call
        this for a lease it does not keep.
        """
        search.check_text(worker, field="worker")
        lease = self.lease_seconds if lease_seconds is None else queue.check_lease(lease_seconds)
        self.expire_leases()
        now = self._now()
        deadline = now + timedelta(seconds=lease)
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(Generation)
                .where(Generation.id == generation_id, queue.lease_held(worker, now))
                .values(lease_expires_at=deadline)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise self._lost(session, generation_id, worker=worker)
        return deadline

    def expire_leases(self, now: datetime | None = None) -> list[int]:
        """Mark running jobs whose lease expired at or before `now` (the clock's time) "interrupted"; their ids.

        Every reader calls this first, so no reader ever shows a job as
        running after its lease ran out. `finished_at` becomes the lease's
        deadline, the last moment the job was known to be alive or not.
        """
        if now is None:
            now = self._now()
        elif now.tzinfo is None:
            raise StorageError("now must be timezone-aware.")
        with Session(self._engine) as session, session.begin():
            # A read first: on SQLite an UPDATE takes the write lock even when it changes nothing.
            if session.scalar(select(Generation.id).where(queue.lease_ran_out(now)).limit(1)) is None:
                return []
            ended = session.scalars(
                update(Generation)
                .where(queue.lease_ran_out(now))
                .values(status="interrupted", finished_at=Generation.lease_expires_at, error=queue.INTERRUPTED)
                .returning(Generation.id)
                .execution_options(synchronize_session=False)
            ).all()
        for generation_id in ended:
            self._leases.release(generation_id)
        if ended:
            log.info("Marked generations %s interrupted: their leases ran out.", ", ".join(map(str, sorted(ended))))
        return sorted(ended)

    def requeue(self, generation_id: int, *, by: str, is_admin: bool) -> GenerationRecord:
        """Queue an interrupted, failed or cancelled job again, as a new job whose parent it is.

        The new job has the same owner, request and input images (the same
        files); the old one stays as it ended, so the history says what
        happened. Only the owner or an admin may; a job that is already queued
        or running again (a child of it is) is not queued a second time.
        """
        search.check_text(by, field="by")
        search.check_flag(is_admin, field="is_admin")
        self.expire_leases()
        now = self._now()
        # Under the landing lock: the copied image rows name files that a
        # concurrent delete of the old job must not remove (files.py).
        with self._landing, self._files.landing(), Session(self._engine) as session, session.begin():
            # 1. Check; nothing is written for a refused request.
            old = session.get(Generation, generation_id)
            if old is None:
                raise RecordNotFound(f"Generation {generation_id} does not exist.")
            if old.user != by and not is_admin:
                raise NotAllowed(f"Only {old.user} or an admin may requeue generation {generation_id}.")
            if old.status not in _REQUEUE_STATUSES:
                raise StorageError(
                    f"Generation {generation_id} is {old.status}; only an interrupted, failed or cancelled one "
                    "can be requeued."
                )
            again = session.scalar(
                select(Generation.id)
                .where(Generation.parent_id == generation_id, Generation.status.in_(("queued", "running")))
                .limit(1)
            )
            if again is not None:
                raise StorageError(f"Generation {generation_id} is already queued again as generation {again}.")
            # 2. The new job, and rows for the images it reads.
            row = _generation_row(_new_from(old, parent_id=generation_id), old.params, status="queued", created_at=now)
            session.add(row)
            session.flush()
            inputs = session.scalars(
                select(Image).where(Image.generation_id == generation_id, Image.role != "output").order_by(Image.id)
            ).all()
            session.add_all(_copy_image(image, generation_id=row.id, created_at=now) for image in inputs)
            session.flush()
            return self._load(session, row.id)

    def cancel(self, generation_id: int, *, by: str, is_admin: bool) -> GenerationRecord:
        """Cancel a queued job before it starts; only its owner or an admin may.

        A running job is stopped by the process that runs it (its engine's
        cancel token, then `fail(status="cancelled")`); this refuses it.
        """
        search.check_text(by, field="by")
        search.check_flag(is_admin, field="is_admin")
        with Session(self._engine) as session, session.begin():
            row = session.get(Generation, generation_id)
            if row is None:
                raise RecordNotFound(f"Generation {generation_id} does not exist.")
            if row.user != by and not is_admin:
                raise NotAllowed(f"Only {row.user} or an admin may cancel generation {generation_id}.")
            if row.status != "queued":
                raise StorageError(
                    f"Generation {generation_id} is {row.status}; only a queued one can be cancelled here."
                )
            result = session.execute(
                update(Generation)
                .where(Generation.id == generation_id, Generation.status == "queued")
                .values(status="cancelled", finished_at=self._now())
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise StorageError(f"Generation {generation_id} started running before it could be cancelled.")
            return self._load(session, generation_id)

    def queue_position(self, generation_id: int) -> int:
        """A queued job's place in the claim order as the queue stands now: 1 is next.

        The place can move back as well as forward: a job queued later by a
        user whose turn comes first goes ahead of it (storage/queue.py).
        """
        with Session(self._engine) as session, session.begin():
            status = session.scalar(select(Generation.status).where(Generation.id == generation_id))
            if status is None:
                raise RecordNotFound(f"Generation {generation_id} does not exist.")
            if status != "queued":
                raise StorageError(f"Generation {generation_id} is {status}, not queued.")
            order = _claim_order(session)
            # The two reads are not one snapshot (SQLite's driver and READ COMMITTED
            # alike): a worker may have claimed the job, or its owner cancelled it, between them.
            if generation_id not in order:
                raise StorageError(f"Generation {generation_id} is no longer queued.")
            return order.index(generation_id) + 1

    def queued(self, *, limit: int = 50) -> list[GenerationRecord]:
        """The queued jobs in the order workers will take them, if nothing else changes; the first `limit`."""
        _check_limit(limit)
        with Session(self._engine) as session, session.begin():
            return self._records(session, _in_order(session, _claim_order(session)[:limit]))

    def finish(
        self,
        generation_id: int,
        *,
        images: Sequence[ImageInput],
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
        model_revision: str | None = None,
    ) -> GenerationRecord:
        """Mark a running generation "succeeded" and land its images with their rows.

        Images of a role the job already has (a queued job's inputs) follow
        them in position. `model_revision`, when given, is recorded: a queued
        job learns it only when its worker loads the model. Raises LeaseLost,
        storing nothing, when the job's lease ran out first (it is interrupted).
        """
        try:
            return self._finish(
                generation_id,
                images=images,
                environment=environment,
                timings=timings,
                duration_ms=duration_ms,
                model_revision=model_revision,
            )
        finally:
            # Whatever happened, that was the job's last word from this process,
            # and its lease is no longer renewed: a job whose end could not be
            # recorded (a full disk, say) is interrupted when the lease runs out,
            # rather than shown running for as long as the process lives.
            self._leases.release(generation_id)

    def fail(
        self,
        generation_id: int,
        *,
        status: str,
        error: str | None,
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
        model_revision: str | None = None,
    ) -> GenerationRecord:
        """Mark a running generation "failed" or "cancelled"; no image is stored.

        `model_revision` as in `finish`. Raises LeaseLost when the job's lease
        ran out first (it is interrupted).
        """
        try:
            return self._fail(
                generation_id,
                status=status,
                error=error,
                environment=environment,
                timings=timings,
                duration_ms=duration_ms,
                model_revision=model_revision,
            )
        finally:
            self._leases.release(generation_id)  # the job's last word, as in finish

    def interrupt(
        self, generation_id: int, *, error: str, environment: Mapping[str, Any], timings: Mapping[str, Any]
    ) -> GenerationRecord:
        """Mark a running generation "interrupted" now, as its lease running out would later.

        For a job whose worker was lost mid-run (a GPU replica that died):
        nothing of it is stored, and it can be requeued. Raises LeaseLost
        when the lease ran out first.
        """
        environment = _json_object(environment, field="environment")
        timings = _json_object(timings, field="timings")
        try:
            self.expire_leases()
            with Session(self._engine) as session, session.begin():
                self._running(session, generation_id)
                self._end(session, generation_id, status="interrupted", error=error, environment=environment,
                          timings=timings, duration_ms=None, model_revision=None)
                return self._load(session, generation_id)
        finally:
            self._leases.release(generation_id)

    def _finish(
        self,
        generation_id: int,
        *,
        images: Sequence[ImageInput],
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
        model_revision: str | None = None,
    ) -> GenerationRecord:
        # 1. Check every input before anything is written.
        _check_images(images)
        for number, item in enumerate(images, start=1):
            if item.role == "output" and item.seed is None:
                raise StorageError(f"Output image {number} has no seed; every output needs the seed that made it.")
        environment = _json_object(environment, field="environment")
        timings = _json_object(timings, field="timings")
        _check_duration(duration_ms)
        if model_revision is not None:
            search.check_text(model_revision, field="model_revision")
        self.expire_leases()

        def write(session: Session, stage: _Stage) -> GenerationRecord:
            params = self._running(session, generation_id).params
            # 2. Write the files under pending names; nothing is visible yet. Each
            #    role's positions go on after the images the job has (a queued job's inputs).
            have = select(Image.role, func.count()).where(Image.generation_id == generation_id).group_by(Image.role)
            positions: Counter[str] = Counter(dict(session.execute(have).tuples().all()))
            rows = []
            for item in images:
                text = None
                if item.role == "output" and item.seed is not None:  # every output has one, checked above
                    text = png_text_chunks(params, seed=item.seed)
                rows.append(stage(generation_id, item, position=positions[item.role], text=text))
                positions[item.role] += 1
            # 3. End the generation and add the rows in one commit.
            self._end(
                session,
                generation_id,
                status="succeeded",
                error=None,
                environment=environment,
                timings=timings,
                duration_ms=duration_ms,
                model_revision=model_revision,
            )
            session.add_all(rows)
            session.flush()
            return self._load(session, generation_id)

        return self._write_with_files(write)

    def _fail(
        self,
        generation_id: int,
        *,
        status: str,
        error: str | None,
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
        model_revision: str | None = None,
    ) -> GenerationRecord:
        if status not in _END_STATUSES:
            raise StorageError(f"status must be one of {', '.join(_END_STATUSES)}, not {status!r}.")
        environment = _json_object(environment, field="environment")
        timings = _json_object(timings, field="timings")
        _check_duration(duration_ms)
        if model_revision is not None:
            search.check_text(model_revision, field="model_revision")
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            self._running(session, generation_id)
            self._end(
                session,
                generation_id,
                status=status,
                error=error,
                environment=environment,
                timings=timings,
                duration_ms=duration_ms,
                model_revision=model_revision,
            )
            return self._load(session, generation_id)

    def _write_with_files(self, write: Callable[[Session, _Stage], GenerationRecord]) -> GenerationRecord:
        """Run `write` in one transaction, landing the files it stages after the commit (files.py).

        `write` gets the session and `stage(generation_id, image, position=,
        text=)`, which writes an image's files under pending names and returns
        its row for `write` to add (with no generation_id yet: None). If anything fails before the commit, the
        staged files are deleted; if the commit itself fails, recovery decides.
        """
        staged: list[StagedImage] = []

        def stage(
            generation_id: int | None, item: ImageInput, *, position: int, text: Mapping[str, str] | None
        ) -> Image:
            stored = self._files.stage(item.image, text=text)
            staged.append(stored)
            return _image_row(generation_id, item, stored, position=position)

        committing = False
        with self._landing, self._files.landing():
            try:
                with Session(self._engine) as session, session.begin():
                    record = write(session, stage)
                    committing = True
            except BaseException:
                if committing:
                    # The commit itself failed and may still have happened (a
                    # dropped connection): recovery decides on the next open.
                    log.warning("A commit with %d staged images failed; their files wait in pending/.", len(staged))
                else:
                    for stored in staged:
                        self._files.discard(stored)
                raise
            # The rows are committed: the files may take their final names.
            for stored in staged:
                self._files.land(stored)
        return record

    def get(self, generation_id: int) -> GenerationRecord:
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            return self._load(session, generation_id)

    def list(
        self, *, limit: int = 24, before_id: int | None = None, status: str | None = None
    ) -> list[GenerationRecord]:
        """Newest first, optionally only one status; pass a page's last id as `before_id` for the next."""
        _check_limit(limit)
        where = search.conditions(status=status)
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(_newest(where, before_id=before_id, limit=limit)).all()
            return self._records(session, rows)

    def search(
        self,
        *,
        text: str | None = None,
        task: str | None = None,
        model: str | None = None,
        user: str | None = None,
        status: str | None = None,
        starred: bool | None = None,
        review: str | None = None,
        tag: str | None = None,
        board: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Generations matching every filter given: newest first, or best match first when `text` has words.

        A generation matches `text` when its prompt or negative prompt holds
        every word of it (a word of three letters or more also as the start of
        a longer one); punctuation is ignored, so a text without letters or
        digits matches everything. The newest 1,000 text matches are ranked,
        older ones follow newest first. `created_from` is inclusive,
        `created_to` exclusive; `board` is a board's name. Pass a page's
        `next_cursor` as `cursor` for the next; storage/search.py says how the
        pages stay correct while the gallery changes.
        """
        # 1. Check inputs.
        _check_limit(limit)
        where = search.conditions(
            task=task,
            model=model,
            user=user,
            status=status,
            starred=starred,
            review=review,
            tag=tag,
            board=board,
            created_from=created_from,
            created_to=created_to,
        )
        found = search.words(text)
        after = search.Cursor.decode(cursor, found)
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            # 2. The ids of one row more than the page, to tell whether there is a next page.
            if not found:
                before_id = None if after is None else after.generation_id
                rows = session.scalars(_newest(where, before_id=before_id, limit=limit + 1)).all()
                cursors = [search.Cursor(row.id) for row in rows]
            else:
                ranked = search.Ranked(session.get_bind().dialect.name, found, where)
                cursors = self._ranked(session, ranked, after, limit)
                rows = _in_order(session, [c.generation_id for c in cursors[:limit]])
            # 3. The records, and where the next page starts.
            next_cursor = cursors[limit - 1].encode(found) if len(cursors) > limit else None
            return Page(records=tuple(self._records(session, rows[:limit])), next_cursor=next_cursor)

    @staticmethod
    def _ranked(
        session: Session, ranked: search.Ranked, after: search.Cursor | None, limit: int
    ) -> list[search.Cursor]:
        """Positions of up to limit + 1 text matches after `after`: the ranked window, then older ones."""
        floor = session.scalar(ranked.window_floor()) if after is None else after.floor
        found: list[search.Cursor] = []
        if after is None or after.score is not None:
            anchor = None
            if after is not None and after.score is not None:
                # Continue after the last row shown as it scores now (see search.py).
                now = session.scalar(ranked.score_of(after.generation_id))
                anchor = (after.score if now is None else now, after.generation_id)
            found += [
                search.Cursor(generation_id, ranked=True, floor=floor, score=score)
                for generation_id, score in session.execute(ranked.best(floor=floor, after=anchor, limit=limit + 1))
            ]
        if len(found) <= limit and floor is not None:
            before_id = floor if after is None or after.score is not None else after.generation_id
            older = session.scalars(ranked.newest(before_id=before_id, limit=limit + 1 - len(found)))
            found += [search.Cursor(generation_id, ranked=True, floor=floor) for generation_id in older]
        return found

    def count(
        self,
        *,
        text: str | None = None,
        task: str | None = None,
        model: str | None = None,
        user: str | None = None,
        status: str | None = None,
        starred: bool | None = None,
        review: str | None = None,
        tag: str | None = None,
        board: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> int:
        """How many generations `search` with the same filters would page through."""
        where = search.conditions(
            task=task,
            model=model,
            user=user,
            status=status,
            starred=starred,
            review=review,
            tag=tag,
            board=board,
            created_from=created_from,
            created_to=created_to,
        )
        found = search.words(text)
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            if found:
                query = search.Ranked(session.get_bind().dialect.name, found, where).count()
            else:
                query = select(func.count()).select_from(Generation).where(*where)
            return session.scalar(query) or 0

    def children(self, generation_id: int) -> list[GenerationRecord]:
        """The reruns and variations made from a generation (rows whose parent it is), oldest first."""
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            self._exists(session, generation_id)
            query = select(Generation).where(Generation.parent_id == generation_id).order_by(Generation.id)
            return self._records(session, session.scalars(query).all())

    def star(self, generation_id: int, *, starred: bool) -> GenerationRecord:
        search.check_flag(starred, field="starred")
        with Session(self._engine) as session, session.begin():
            self._set(session, generation_id, starred=starred)
            return self._load(session, generation_id)

    def review(self, generation_id: int, *, state: str, note: str | None, by: str) -> GenerationRecord:
        """Set a generation's review state ("none" undoes one), with an optional note; records who and when."""
        search.check_word(state, REVIEWS, field="state")
        if note is not None and not isinstance(note, str):
            raise StorageError(f"note must be a string or None, not {type(note).__name__}.")
        if note is not None and len(note) > _MAX_NOTE:
            raise StorageError(f"note must be at most {_MAX_NOTE} characters, not {len(note)}.")
        search.check_text(by, field="by")
        with Session(self._engine) as session, session.begin():
            self._set(session, generation_id, review=state, review_note=note, reviewed_by=by, reviewed_at=utcnow())
            return self._load(session, generation_id)

    def add_tags(self, generation_id: int, tags: Iterable[str]) -> GenerationRecord:
        """Add tags to a generation; tags it already has stay as they are."""
        checked = search.check_tags(tags)
        with Session(self._engine) as session, session.begin():
            self._exists(session, generation_id)
            _insert_new(session, Tag, [{"generation_id": generation_id, "tag": tag} for tag in checked])
            return self._load(session, generation_id)

    def remove_tags(self, generation_id: int, tags: Iterable[str]) -> GenerationRecord:
        """Remove tags from a generation; tags it does not have are ignored."""
        checked = search.check_tags(tags)
        with Session(self._engine) as session, session.begin():
            self._exists(session, generation_id)
            if checked:
                session.execute(delete(Tag).where(Tag.generation_id == generation_id, Tag.tag.in_(checked)))
            return self._load(session, generation_id)

    def create_board(self, name: str, *, by: str) -> BoardRecord:
        search.check_text(name, field="name", longest=_MAX_BOARD_NAME)
        search.check_text(by, field="by")
        taken = StorageError(f"A board named {name!r} already exists; choose another name.")
        try:
            with Session(self._engine) as session, session.begin():
                if session.scalar(select(Board.id).where(Board.name == name)) is not None:
                    raise taken
                row = Board(name=name, created_by=by, created_at=utcnow())
                session.add(row)
                session.flush()
                return _board(row, size=0)
        except IntegrityError:  # created by another request between the check and the insert
            raise taken from None

    def add_to_board(self, board: str, generation_ids: Iterable[int]) -> BoardRecord:
        """Put generations on a board by its name; those already on it stay as they are."""
        ids = _check_ids(generation_ids)
        with Session(self._engine) as session, session.begin():
            row = self._board(session, board)
            found = set(session.scalars(select(Generation.id).where(Generation.id.in_(ids))))
            missing = [str(generation_id) for generation_id in ids if generation_id not in found]
            if missing:
                named = f"Generation {missing[0]} does" if len(missing) == 1 else f"Generations {', '.join(missing)} do"
                raise RecordNotFound(f"{named} not exist; nothing was added to {board!r}.")
            now = utcnow()
            _insert_new(session, BoardItem, [{"board_id": row.id, "generation_id": i, "added_at": now} for i in ids])
            return _board(row, size=self._board_size(session, row.id))

    def remove_from_board(self, board: str, generation_ids: Iterable[int]) -> BoardRecord:
        """Take generations off a board by its name; those not on it are ignored."""
        ids = _check_ids(generation_ids)
        with Session(self._engine) as session, session.begin():
            row = self._board(session, board)
            if ids:
                session.execute(delete(BoardItem).where(BoardItem.board_id == row.id, BoardItem.generation_id.in_(ids)))
            return _board(row, size=self._board_size(session, row.id))

    def boards(self) -> list[BoardRecord]:
        """Every board, by name."""
        query = (
            select(Board, func.count(BoardItem.generation_id))
            .outerjoin(BoardItem, BoardItem.board_id == Board.id)
            .group_by(Board.id)
            .order_by(Board.name)
        )
        with Session(self._engine) as session, session.begin():
            return [_board(row, size=size) for row, size in session.execute(query)]

    def delete(self, generation_id: int, *, by: str, is_admin: bool) -> GenerationRecord:
        """Delete a generation, its images, tags and board places, and the files no other record shares.

        Only its owner (the `user` it was made for) or an admin may; a running
        generation must end first, a queued one be cancelled. Returns the record as it was.
        """
        search.check_text(by, field="by")
        search.check_flag(is_admin, field="is_admin")
        self.expire_leases()
        # Files go with rows in the landing protocol's way, reversed (files.py):
        # mark the files, commit the deletion, then unlink what no row names.
        with self._landing, self._files.removing():
            with Session(self._engine) as session, session.begin():
                # 1. Check; nothing is written for a refused request.
                record = self._load(session, generation_id)
                if record.user != by and not is_admin:
                    raise NotAllowed(f"Only {record.user} or an admin may delete generation {generation_id}.")
                if record.status in _LIVE_STATUSES:
                    raise StorageError(
                        f"Generation {generation_id} is still {record.status}; cancel it before deleting it."
                    )
                # 2. Delete the rows (cascading to images, tags, board items) unless
                #    a worker claimed the job meanwhile, then mark its files.
                result = session.execute(
                    delete(Generation)
                    .where(Generation.id == generation_id, Generation.status.not_in(_LIVE_STATUSES))
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise StorageError(f"Generation {generation_id} started running; cancel it before deleting it.")
                shas = {image.sha256 for image in record.images}
                self._files.mark_for_removal(shas)
            # 3. Committed: remove the files that no other record shares.
            with Session(self._engine) as session, session.begin():
                referenced = _referenced(session, shas)
            self._files.finish_removal(shas, referenced=referenced)
        return record

    def path(self, relative: str) -> Path:
        """The absolute path of a record's `path` or `thumb_path`; refuses anything outside the data folder."""
        return self._files.absolute(relative)

    def _recover(self) -> None:
        def committed(shas: set[str]) -> set[str]:
            with Session(self._engine) as session, session.begin():
                return _referenced(session, shas)

        outcome = self._files.recover(committed=committed)
        if outcome is None:
            log.info("Skipped recovery of pending files: another process is landing files.")
        elif any(outcome):
            log.info("Recovered pending files: %d landed, %d deleted.", *outcome)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise StorageError("The gallery's clock must tell timezone-aware time.")
        return now

    def _renew(self, generation_id: int, worker: str, lease_seconds: float) -> None:
        """The lease keeper's renewal (storage/queue.py)."""
        self.heartbeat(generation_id, worker=worker, lease_seconds=lease_seconds)

    @staticmethod
    def _running(session: Session, generation_id: int) -> Generation:
        row = session.get(Generation, generation_id)
        if row is None:
            raise RecordNotFound(f"Generation {generation_id} does not exist.")
        if row.status == "interrupted":
            raise LeaseLost(
                f"Generation {generation_id} was marked interrupted when its lease ran out at "
                f"{row.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC; its result was not stored. Requeue it to run it again."
            )
        if row.status != "running":
            raise StorageError(f"Generation {generation_id} is already {row.status}; only a running one can end.")
        return row

    def _end(
        self, session: Session, generation_id: int, *, status: str, model_revision: str | None, **values: Any
    ) -> None:
        # The status and the lease are tested in the UPDATE itself, so that two
        # requests ending the same generation cannot both win, and a lease that
        # runs out while the files are staged ends nothing, on SQLite or PostgreSQL.
        now = self._now()
        if model_revision is not None:
            values["model_revision"] = model_revision
        result = session.execute(
            update(Generation)
            .where(Generation.id == generation_id, queue.lease_held(None, now))
            .values(status=status, finished_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            row = session.get(Generation, generation_id, populate_existing=True)
            if row is not None and row.status in ("running", "interrupted"):
                raise LeaseLost(
                    f"Generation {generation_id}'s lease ran out before its end was recorded; its result was not "
                    "stored. Requeue it to run it again."
                )
            raise StorageError(f"Generation {generation_id} was ended by another request first.")

    @staticmethod
    def _lost(session: Session, generation_id: int, *, worker: str) -> StorageError:
        """Why a heartbeat changed nothing."""
        row = session.get(Generation, generation_id, populate_existing=True)
        if row is None:
            return RecordNotFound(f"Generation {generation_id} does not exist.")
        if row.status == "running" and row.lease_owner != worker:
            return LeaseLost(f"Generation {generation_id} runs under {row.lease_owner}'s lease, not {worker}'s.")
        return LeaseLost(f"Generation {generation_id} is {row.status}; {worker} no longer holds its lease.")

    @staticmethod
    def _exists(session: Session, generation_id: int) -> None:
        if session.scalar(select(Generation.id).where(Generation.id == generation_id)) is None:
            raise RecordNotFound(f"Generation {generation_id} does not exist.")

    @staticmethod
    def _set(session: Session, generation_id: int, **values: Any) -> None:
        result = session.execute(
            update(Generation)
            .where(Generation.id == generation_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise RecordNotFound(f"Generation {generation_id} does not exist.")

    @staticmethod
    def _board(session: Session, name: str) -> Board:
        row = session.scalar(select(Board).where(Board.name == search.check_text(name, field="board")))
        if row is None:
            raise RecordNotFound(f"Board {name!r} does not exist.")
        return row

    @staticmethod
    def _board_size(session: Session, board_id: int) -> int:
        return session.scalar(select(func.count()).where(BoardItem.board_id == board_id)) or 0

    @classmethod
    def _load(cls, session: Session, generation_id: int) -> GenerationRecord:
        session.expire_all()
        row = session.get(Generation, generation_id)
        if row is None:
            raise RecordNotFound(f"Generation {generation_id} does not exist.")
        return cls._records(session, [row])[0]

    @staticmethod
    def _records(session: Session, rows: Sequence[Generation]) -> list[GenerationRecord]:
        """Records for rows, with their images, tags and boards in three queries for the lot."""
        ids = [row.id for row in rows]
        images: dict[int, list[Image]] = {}
        tags: dict[int, list[str]] = {}
        boards: dict[int, list[str]] = {}
        if ids:
            for image in session.scalars(select(Image).where(Image.generation_id.in_(ids))):
                images.setdefault(image.generation_id, []).append(image)
            for generation_id, tag in session.execute(
                select(Tag.generation_id, Tag.tag).where(Tag.generation_id.in_(ids)).order_by(Tag.tag)
            ):
                tags.setdefault(generation_id, []).append(tag)
            for generation_id, name in session.execute(
                select(BoardItem.generation_id, Board.name)
                .join(Board, Board.id == BoardItem.board_id)
                .where(BoardItem.generation_id.in_(ids))
                .order_by(Board.name)
            ):
                boards.setdefault(generation_id, []).append(name)
        return [_record(row, images.get(row.id, ()), tags.get(row.id, ()), boards.get(row.id, ())) for row in rows]


def _check_new(new: NewGeneration) -> dict[str, Any]:
    """Check a new generation's fields; returns its params as they will read back."""
    if not new.user:
        raise StorageError("user must not be empty.")
    _check_seed(new.seed, field="seed")
    return _json_object(new.params, field="params")


def _check_images(images: Sequence[ImageInput]) -> None:
    for number, item in enumerate(images, start=1):
        if item.role not in ROLES:
            raise StorageError(f"Image {number} has role {item.role!r}; allowed roles are {', '.join(ROLES)}.")
        if item.image.mode not in PNG_MODES:
            raise StorageError(
                f"Image {number} has mode {item.image.mode}, which PNG cannot hold; allowed modes are "
                f"{', '.join(PNG_MODES)}."
            )
        if item.seed is not None:
            _check_seed(item.seed, field=f"Image {number} seed")


def _check_parent(session: Session, parent_id: int | None) -> None:
    if parent_id is not None and session.get(Generation, parent_id) is None:
        raise RecordNotFound(f"Parent generation {parent_id} does not exist.")


def _generation_row(
    new: NewGeneration, params: dict[str, Any], *, created_at: datetime, status: str = "running", **values: Any
) -> Generation:
    return Generation(
        created_at=created_at,
        user=new.user,
        task=new.task,
        model=new.model,
        model_revision=new.model_revision,
        params=params,
        prompt=new.prompt,
        negative_prompt=new.negative_prompt,
        seed=new.seed,
        sampler=new.sampler,
        num_inference_steps=new.num_inference_steps,
        guidance_scale=new.guidance_scale,
        width=new.width,
        height=new.height,
        batch_size=new.batch_size,
        status=status,
        timings={},
        environment={},
        parent_id=new.parent_id,
        **values,
    )


def _new_from(row: Generation, *, parent_id: int) -> NewGeneration:
    """The same request as a stored generation's, as the child of `parent_id`."""
    return NewGeneration(
        user=row.user,
        task=row.task,
        model=row.model,
        model_revision=row.model_revision,
        params=row.params,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        seed=row.seed,
        sampler=row.sampler,
        num_inference_steps=row.num_inference_steps,
        guidance_scale=row.guidance_scale,
        width=row.width,
        height=row.height,
        batch_size=row.batch_size,
        parent_id=parent_id,
    )


def _copy_image(image: Image, *, generation_id: int, created_at: datetime) -> Image:
    """A row for another generation naming the same files (content addressing shares them)."""
    return Image(
        generation_id=generation_id,
        role=image.role,
        position=image.position,
        seed=image.seed,
        sha256=image.sha256,
        path=image.path,
        width=image.width,
        height=image.height,
        thumb_path=image.thumb_path,
        created_at=created_at,
    )


def _claim_order(session: Session) -> list[int]:
    """Every queued job's id, in the order claims would take them now (storage/queue.py)."""
    jobs = session.execute(
        select(Generation.id, Generation.user).where(Generation.status == "queued").order_by(Generation.id)
    ).tuples().all()
    users = {user for _, user in jobs}
    latest: dict[str, datetime | None] = {}
    if users:
        latest = dict(
            session.execute(
                select(Generation.user, func.max(Generation.started_at))
                .where(Generation.user.in_(users))
                .group_by(Generation.user)
            ).tuples().all()
        )
    return queue.claim_order(jobs, latest)


def _newest(where: Sequence[ColumnElement[bool]], *, before_id: int | None, limit: int) -> Any:
    # Keyset pagination: stable while new generations arrive, and as cheap on
    # page 100 as on page 1, which OFFSET is not.
    query = select(Generation).where(*where).order_by(Generation.id.desc()).limit(limit)
    return query if before_id is None else query.where(Generation.id < before_id)


def _in_order(session: Session, ids: Sequence[int]) -> list[Generation]:
    """The rows with these ids, in this order."""
    found = {row.id: row for row in session.scalars(select(Generation).where(Generation.id.in_(ids)))} if ids else {}
    return [found[generation_id] for generation_id in ids if generation_id in found]


def _referenced(session: Session, shas: Collection[str]) -> set[str]:
    """Which of these files some image row names."""
    if not shas:
        return set()
    return set(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas)).distinct()))


def _insert_new(session: Session, model: type[Base], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, skipping those whose key is already there (two people adding one tag both succeed)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}.get(dialect)
    if insert is None:
        raise StorageError(f"Tags and boards need SQLite or PostgreSQL; this gallery is on {dialect}.")
    session.execute(insert(model.__table__).on_conflict_do_nothing(), list(rows))


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST:
        raise StorageError(f"limit must be between 1 and {_MAX_LIST}, not {limit}.")


def _check_ids(generation_ids: Iterable[int]) -> list[int]:
    if isinstance(generation_ids, str | bytes) or not isinstance(generation_ids, Iterable):
        raise StorageError(f"generation_ids must be a list of ids, not {type(generation_ids).__name__}.")
    ids = list(generation_ids)
    for generation_id in ids:
        if isinstance(generation_id, bool) or not isinstance(generation_id, int):
            raise StorageError(f"generation_ids must hold whole numbers, not {generation_id!r}.")
    return list(dict.fromkeys(ids))


def _board(row: Board, *, size: int) -> BoardRecord:
    return BoardRecord(id=row.id, name=row.name, created_by=row.created_by, created_at=row.created_at, size=size)


def _image_row(generation_id: int | None, item: ImageInput, stored: StagedImage, *, position: int) -> Image:
    return Image(
        generation_id=generation_id,
        role=item.role,
        position=position,
        seed=item.seed,
        sha256=stored.sha256,
        path=stored.path,
        width=stored.width,
        height=stored.height,
        thumb_path=stored.thumb_path,
        created_at=utcnow(),
    )


def _record(
    row: Generation, images: Sequence[Image] = (), tags: Sequence[str] = (), boards: Sequence[str] = ()
) -> GenerationRecord:
    ordered = sorted(images, key=lambda image: (ROLES.index(image.role), image.position))
    return GenerationRecord(
        id=row.id,
        created_at=row.created_at,
        finished_at=row.finished_at,
        user=row.user,
        task=row.task,
        model=row.model,
        model_revision=row.model_revision,
        params=row.params,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        seed=row.seed,
        sampler=row.sampler,
        num_inference_steps=row.num_inference_steps,
        guidance_scale=row.guidance_scale,
        width=row.width,
        height=row.height,
        batch_size=row.batch_size,
        status=row.status,
        error=row.error,
        duration_ms=row.duration_ms,
        timings=row.timings,
        environment=row.environment,
        parent_id=row.parent_id,
        images=tuple(
            ImageRecord(
                id=image.id,
                generation_id=image.generation_id,
                role=image.role,
                position=image.position,
                seed=image.seed,
                sha256=image.sha256,
                path=image.path,
                width=image.width,
                height=image.height,
                thumb_path=image.thumb_path,
            )
            for image in ordered
        ),
        starred=row.starred,
        review=row.review,
        review_note=row.review_note,
        reviewed_by=row.reviewed_by,
        reviewed_at=row.reviewed_at,
        tags=tuple(tags),
        boards=tuple(boards),
        started_at=row.started_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
    )


def _json_object(value: Mapping[str, Any], *, field: str) -> dict[str, Any]:
    """A deep copy as it will read back from the JSON column, so a record written equals one read."""
    if not isinstance(value, Mapping):
        raise StorageError(f"{field} must be a dict, not {type(value).__name__}.")
    try:
        copied: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise StorageError(
            f"{field} must hold only JSON values (text, finite numbers, lists, dicts): {error}."
        ) from None
    return copied


def _check_seed(seed: int, *, field: str) -> None:
    if not 0 <= seed <= _MAX_SEED:
        raise StorageError(f"{field} must be between 0 and {_MAX_SEED}, not {seed}.")


def _check_duration(duration_ms: int | None) -> None:
    if duration_ms is not None and duration_ms < 0:
        raise StorageError(f"duration_ms must be zero or more, not {duration_ms}.")
