"""A running job's side of the gallery: it starts under a lease, renews it, and ends with its images or an error.

Every end is refused (LeaseLost) once the job's lease has run out, so a job
that was marked interrupted never also ends as if it had run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.errors import LeaseLost, RecordNotFound, StorageError
from storage.gallery.core import GalleryCore, Stage, check_images, check_new, check_parent
from storage.gallery.rows import generation_record, generation_row
from storage.models import Generation, Image
from storage.pngmeta import png_text_chunks
from storage.queue import check_lease, lease_held
from storage.records import GenerationRecord, ImageInput, NewGeneration
from storage.validators import check_duration, check_score, check_text, json_object

_END_STATUSES = ("failed", "cancelled")


class Runs(GalleryCore):
    def start(self, new: NewGeneration) -> GenerationRecord:
        """Record a generation that is about to run, with status "running", under this gallery's lease."""
        params = check_new(new)
        now = self._now()
        lease_expires_at = now + timedelta(seconds=self.lease_seconds)
        with Session(self._engine) as session, session.begin():
            check_parent(session, new.parent_id)
            row = generation_row(
                new, params, created_at=now, started_at=now, lease_owner=self.worker, lease_expires_at=lease_expires_at
            )
            session.add(row)
            session.flush()
            record = generation_record(row)
        self._leases.hold(record.id, worker=self.worker, lease_seconds=self.lease_seconds)
        return record

    def heartbeat(self, generation_id: int, *, worker: str, lease_seconds: float | None = None) -> datetime:
        """Extend a running job's lease to `lease_seconds` from now; returns the new deadline.

        Raises LeaseLost when the job is not running under `worker`'s lease
        any more (its lease ran out and it was marked interrupted, or it
        ended). This gallery already renews the leases it hands out; call
        this for a lease it does not keep.
        """
        check_text(worker, field="worker")
        lease = self.lease_seconds if lease_seconds is None else check_lease(lease_seconds)
        self.expire_leases()
        now = self._now()
        deadline = now + timedelta(seconds=lease)
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(Generation)
                .where(Generation.id == generation_id, lease_held(worker, now))
                .values(lease_expires_at=deadline)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise _lost(session, generation_id, worker=worker)
        return deadline

    def finish(
        self,
        generation_id: int,
        *,
        images: Sequence[ImageInput],
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
        model_revision: str | None = None,
        adherence: Mapping[str, Any] | None = None,
    ) -> GenerationRecord:
        """Mark a running generation "succeeded" and land its images with their rows.

        Images of a role the job already has (a queued job's inputs) follow
        them in position. `model_revision`, when given, is recorded: a queued
        job learns it only when its worker loads the model. `adherence` is the
        scorer's result (pipelines/adherence.py `Adherence.to_dict()`): its
        "score" (from 0 to 1, or None) becomes the record's `adherence`, the
        whole of it `adherence_detail`. Raises LeaseLost, storing nothing,
        when the job's lease ran out first (it is interrupted).
        """
        try:
            return self._finish(
                generation_id,
                images=images,
                environment=environment,
                timings=timings,
                duration_ms=duration_ms,
                model_revision=model_revision,
                adherence=adherence,
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
            if status not in _END_STATUSES:
                raise StorageError(f"status must be one of {', '.join(_END_STATUSES)}, not {status!r}.")
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
        try:
            return self._fail(
                generation_id,
                status="interrupted",
                error=error,
                environment=environment,
                timings=timings,
                duration_ms=None,
            )
        finally:
            self._leases.release(generation_id)

    def release(self, generation_id: int) -> GenerationRecord:
        """Put a claimed job back in the queue, the same row, as if it had not been claimed.

        For a job its executor could not take (a GPU pool that went out of
        reach before anything ran): nothing of it ran, so it waits its turn
        again rather than reading failed or interrupted. Raises LeaseLost when
        its lease ran out first.
        """
        try:
            self.expire_leases()
            now = self._now()
            with Session(self._engine) as session, session.begin():
                _running(session, generation_id)
                result = session.execute(
                    update(Generation)
                    .where(Generation.id == generation_id, lease_held(None, now))
                    .values(status="queued", started_at=None, lease_owner=None, lease_expires_at=None)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise LeaseLost(f"Generation {generation_id}'s lease ran out before it could be queued again.")
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
        adherence: Mapping[str, Any] | None = None,
    ) -> GenerationRecord:
        # 1. Check every input before anything is written.
        check_images(images)
        scored: dict[str, Any] = {}
        if adherence is not None:
            detail = json_object(adherence, field="adherence")
            score = detail.get("score")
            scored = {
                "adherence": None if score is None else check_score(score, field="adherence score"),
                "adherence_detail": detail,
            }
        for number, item in enumerate(images, start=1):
            if item.role == "output" and item.seed is None:
                raise StorageError(f"Output image {number} has no seed; every output needs the seed that made it.")
        environment = json_object(environment, field="environment")
        timings = json_object(timings, field="timings")
        check_duration(duration_ms)
        if model_revision is not None:
            check_text(model_revision, field="model_revision")
        self.expire_leases()

        def write(session: Session, stage: Stage) -> GenerationRecord:
            params = _running(session, generation_id).params
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
                **scored,
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
        environment = json_object(environment, field="environment")
        timings = json_object(timings, field="timings")
        check_duration(duration_ms)
        if model_revision is not None:
            check_text(model_revision, field="model_revision")
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            _running(session, generation_id)
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

    def _renew(self, generation_id: int, worker: str, lease_seconds: float) -> None:
        """The lease keeper's renewal (storage/queue.py)."""
        self.heartbeat(generation_id, worker=worker, lease_seconds=lease_seconds)

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
            .where(Generation.id == generation_id, lease_held(None, now))
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


def _lost(session: Session, generation_id: int, *, worker: str) -> StorageError:
    """Why a heartbeat changed nothing."""
    row = session.get(Generation, generation_id, populate_existing=True)
    if row is None:
        return RecordNotFound(f"Generation {generation_id} does not exist.")
    if row.status == "running" and row.lease_owner != worker:
        return LeaseLost(f"Generation {generation_id} runs under {row.lease_owner}'s lease, not {worker}'s.")
    return LeaseLost(f"Generation {generation_id} is {row.status}; {worker} no longer holds its lease.")
