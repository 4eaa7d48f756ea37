"""The queue's side of the gallery: jobs wait, are claimed in turn, are cancelled or queued again.

storage/queue.py holds the rules (who goes next, when a lease has run out);
this holds the transactions that apply them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.errors import NotAllowed, RecordNotFound, StorageError
from storage.gallery.core import GalleryCore, Stage, check_images, check_new, check_parent, in_order
from storage.gallery.rows import copy_image, generation_row, new_from
from storage.models import Generation, Image
from storage.queue import check_lease, claim_order, next_job
from storage.records import GenerationRecord, ImageInput, NewGeneration
from storage.validators import check_flag, check_limit, check_text

_REQUEUE_STATUSES = ("interrupted", "failed", "cancelled")


class Jobs(GalleryCore):
    def enqueue(self, new: NewGeneration, *, inputs: Sequence[ImageInput] = ()) -> GenerationRecord:
        """Record a generation that waits its turn, with status "queued"; nothing runs yet.

        `inputs` are the images the job will read (roles input, mask,
        control); they are stored now, with the row, so a worker in any
        process finds them in the record and the job survives a restart.
        """
        # 1. Check every input before anything is written.
        params = check_new(new)
        check_images(inputs)
        for number, item in enumerate(inputs, start=1):
            if item.role == "output":
                raise StorageError(
                    f"Image {number} is an output; a queued job takes only input, mask or control images."
                )
        now = self._now()

        # 2. The row and its input images land together. The files are staged
        #    before the first write, so SQLite's write lock is not held while
        #    images are encoded; the rows get the new id from the relationship.
        def write(session: Session, stage: Stage) -> GenerationRecord:
            check_parent(session, new.parent_id)
            rows = []
            positions: Counter[str] = Counter()
            for item in inputs:
                rows.append(stage(None, item, position=positions[item.role], text=None))
                positions[item.role] += 1
            row = generation_row(new, params, status="queued", created_at=now, images=rows)
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
        worker = self.worker if worker is None else check_text(worker, field="worker")
        lease = self.lease_seconds if lease_seconds is None else check_lease(lease_seconds)
        while True:
            now = self._now()
            with Session(self._engine) as session, session.begin():
                head = session.scalar(next_job())
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

    def requeue(self, generation_id: int, *, by: str, is_admin: bool) -> GenerationRecord:
        """Queue an interrupted, failed or cancelled job again, as a new job whose parent it is.

        The new job has the same owner, request and input images (the same
        files); the old one stays as it ended, so the history says what
        happened. Only the owner or an admin may; a job that is already queued
        or running again (a child of it is) is not queued a second time.
        """
        check_text(by, field="by")
        check_flag(is_admin, field="is_admin")
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
            row = generation_row(new_from(old, parent_id=generation_id), old.params, status="queued", created_at=now)
            session.add(row)
            session.flush()
            inputs = session.scalars(
                select(Image).where(Image.generation_id == generation_id, Image.role != "output").order_by(Image.id)
            ).all()
            session.add_all(copy_image(image, generation_id=row.id, created_at=now) for image in inputs)
            session.flush()
            return self._load(session, row.id)

    def cancel(self, generation_id: int, *, by: str, is_admin: bool) -> GenerationRecord:
        """Cancel a queued job before it starts; only its owner or an admin may.

        A running job is stopped by the process that runs it (its engine's
        cancel token, then `fail(status="cancelled")`); this refuses it.
        """
        check_text(by, field="by")
        check_flag(is_admin, field="is_admin")
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
        check_limit(limit)
        with Session(self._engine) as session, session.begin():
            return self._records(session, in_order(session, _claim_order(session)[:limit]))


def _claim_order(session: Session) -> list[int]:
    """Every queued job's id, in the order claims would take them now (storage/queue.py)."""
    jobs = (
        session.execute(
            select(Generation.id, Generation.user).where(Generation.status == "queued").order_by(Generation.id)
        )
        .tuples()
        .all()
    )
    users = {user for _, user in jobs}
    latest: dict[str, datetime | None] = {}
    if users:
        latest = dict(
            session.execute(
                select(Generation.user, func.max(Generation.started_at))
                .where(Generation.user.in_(users))
                .group_by(Generation.user)
            )
            .tuples()
            .all()
        )
    return claim_order(jobs, latest)
