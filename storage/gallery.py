"""The gallery service: generation records and their image files, one short transaction per method."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from storage.db import make_engine, upgrade
from storage.files import PNG_MODES, FileStore, StagedImage
from storage.models import ROLES, STATUSES, Generation, Image, utcnow
from storage.pngmeta import png_text_chunks
from storage.records import (
    GenerationRecord,
    ImageInput,
    ImageRecord,
    NewGeneration,
    RecordNotFound,
    StorageError,
)

log = logging.getLogger(__name__)

_MAX_SEED = 2**63 - 1  # BIGINT is signed
_MAX_LIST = 1000
_END_STATUSES = ("failed", "cancelled")


class Gallery:
    """Every generation and image a studio has made, in a database and a data folder.

    The default database is `sqlite:///<data_dir>/gallery.db`; any SQLAlchemy
    URL (PostgreSQL for a team) works the same, with images on a shared folder.
    """

    def __init__(self, *, url: str, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._files = FileStore(self.data_dir)
        self._engine = make_engine(url)
        upgrade(self._engine)
        # Stage, commit and land run under one lock so that two threads landing
        # identical bytes never write the same pending name at once (the file
        # lock in FileStore.landing is shared, so it does not exclude threads).
        self._landing = threading.Lock()
        self._recover()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def start(self, new: NewGeneration) -> GenerationRecord:
        """Record a generation that is about to run, with status "running"."""
        if not new.user:
            raise StorageError("user must not be empty.")
        _check_seed(new.seed, field="seed")
        params = _json_object(new.params, field="params")
        with Session(self._engine) as session, session.begin():
            if new.parent_id is not None and session.get(Generation, new.parent_id) is None:
                raise RecordNotFound(f"Parent generation {new.parent_id} does not exist.")
            row = Generation(
                created_at=utcnow(),
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
                status="running",
                timings={},
                environment={},
                parent_id=new.parent_id,
            )
            session.add(row)
            session.flush()
            return _record(row)

    def finish(
        self,
        generation_id: int,
        *,
        images: Sequence[ImageInput],
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
    ) -> GenerationRecord:
        """Mark a running generation "succeeded" and land its images with their rows."""
        # 1. Check every input before anything is written.
        for number, item in enumerate(images, start=1):
            if item.role not in ROLES:
                raise StorageError(f"Image {number} has role {item.role!r}; allowed roles are {', '.join(ROLES)}.")
            if item.image.mode not in PNG_MODES:
                raise StorageError(
                    f"Image {number} has mode {item.image.mode}, which PNG cannot hold; allowed modes are "
                    f"{', '.join(PNG_MODES)}."
                )
            if item.role == "output" and item.seed is None:
                raise StorageError(f"Output image {number} has no seed; every output needs the seed that made it.")
            if item.seed is not None:
                _check_seed(item.seed, field=f"Image {number} seed")
        environment = _json_object(environment, field="environment")
        timings = _json_object(timings, field="timings")
        _check_duration(duration_ms)

        staged: list[StagedImage] = []
        committing = False
        with self._landing, self._files.landing():
            try:
                with Session(self._engine) as session, session.begin():
                    params = self._running(session, generation_id).params
                    # 2. Write the files under pending names; nothing is visible yet.
                    rows = []
                    positions: Counter[str] = Counter()
                    for item in images:
                        text = None
                        if item.role == "output" and item.seed is not None:  # every output has one, checked above
                            text = png_text_chunks(params, seed=item.seed)
                        stored = self._files.stage(item.image, text=text)
                        staged.append(stored)
                        rows.append(_image_row(generation_id, item, stored, position=positions[item.role]))
                        positions[item.role] += 1
                    # 3. Claim the generation and add the rows in one commit.
                    self._claim(
                        session,
                        generation_id,
                        status="succeeded",
                        error=None,
                        environment=environment,
                        timings=timings,
                        duration_ms=duration_ms,
                    )
                    session.add_all(rows)
                    session.flush()
                    record = self._load(session, generation_id)
                    committing = True
            except BaseException:
                if committing:
                    # The commit itself failed and may still have happened (a
                    # dropped connection): recovery decides on the next open.
                    log.warning("Commit of generation %s failed; its files wait in pending/.", generation_id)
                else:
                    for stored in staged:
                        self._files.discard(stored)
                raise
            # 4. The rows are committed: the files may take their final names.
            for stored in staged:
                self._files.land(stored)
        return record

    def fail(
        self,
        generation_id: int,
        *,
        status: str,
        error: str | None,
        environment: Mapping[str, Any],
        timings: Mapping[str, Any],
        duration_ms: int | None,
    ) -> GenerationRecord:
        """Mark a running generation "failed" or "cancelled"; no image is stored."""
        if status not in _END_STATUSES:
            raise StorageError(f"status must be one of {', '.join(_END_STATUSES)}, not {status!r}.")
        environment = _json_object(environment, field="environment")
        timings = _json_object(timings, field="timings")
        _check_duration(duration_ms)
        with Session(self._engine) as session, session.begin():
            self._running(session, generation_id)
            self._claim(
                session,
                generation_id,
                status=status,
                error=error,
                environment=environment,
                timings=timings,
                duration_ms=duration_ms,
            )
            return self._load(session, generation_id)

    def get(self, generation_id: int) -> GenerationRecord:
        with Session(self._engine) as session, session.begin():
            return self._load(session, generation_id)

    def list(
        self, *, limit: int = 24, before_id: int | None = None, status: str | None = None
    ) -> list[GenerationRecord]:
        """Newest first, optionally only one status; pass a page's last id as `before_id` for the next."""
        if not 1 <= limit <= _MAX_LIST:
            raise StorageError(f"limit must be between 1 and {_MAX_LIST}, not {limit}.")
        # Keyset pagination: stable while new generations arrive, and as cheap on
        # page 100 as on page 1, which OFFSET is not.
        query = _filtered(select(Generation), status=status).order_by(Generation.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(Generation.id < before_id)
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(query).all()
            images = _images_by_generation(session, [row.id for row in rows])
            return [_record(row, images.get(row.id, [])) for row in rows]

    def count(self, *, status: str | None = None) -> int:
        query = _filtered(select(func.count()).select_from(Generation), status=status)
        with Session(self._engine) as session, session.begin():
            return session.scalar(query) or 0

    def path(self, relative: str) -> Path:
        """The absolute path of a record's `path` or `thumb_path`; refuses anything outside the data folder."""
        return self._files.absolute(relative)

    def _recover(self) -> None:
        def committed(shas: set[str]) -> set[str]:
            with Session(self._engine) as session, session.begin():
                return set(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas)).distinct()))

        outcome = self._files.recover(committed=committed)
        if outcome is None:
            log.info("Skipped recovery of pending files: another process is landing files.")
        elif any(outcome):
            log.info("Recovered pending files: %d landed, %d deleted.", *outcome)

    @staticmethod
    def _running(session: Session, generation_id: int) -> Generation:
        row = session.get(Generation, generation_id)
        if row is None:
            raise RecordNotFound(f"Generation {generation_id} does not exist.")
        if row.status != "running":
            raise StorageError(f"Generation {generation_id} is already {row.status}; only a running one can end.")
        return row

    @staticmethod
    def _claim(session: Session, generation_id: int, *, status: str, **values: Any) -> None:
        # The status test is in the UPDATE itself so that two requests ending the
        # same generation cannot both win, on SQLite or PostgreSQL.
        result = session.execute(
            update(Generation)
            .where(Generation.id == generation_id, Generation.status == "running")
            .values(status=status, finished_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StorageError(f"Generation {generation_id} was ended by another request first.")

    @staticmethod
    def _load(session: Session, generation_id: int) -> GenerationRecord:
        session.expire_all()
        row = session.get(Generation, generation_id)
        if row is None:
            raise RecordNotFound(f"Generation {generation_id} does not exist.")
        return _record(row, _images_by_generation(session, [generation_id]).get(generation_id, []))


def _filtered(query: Select[Any], *, status: str | None) -> Select[Any]:
    if status is None:
        return query
    if status not in STATUSES:
        raise StorageError(f"status must be one of {', '.join(STATUSES)}, not {status!r}.")
    return query.where(Generation.status == status)


def _image_row(generation_id: int, item: ImageInput, stored: StagedImage, *, position: int) -> Image:
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


def _images_by_generation(session: Session, ids: Sequence[int]) -> dict[int, list[Image]]:
    found: dict[int, list[Image]] = {}
    if ids:
        for image in session.scalars(select(Image).where(Image.generation_id.in_(ids))):
            found.setdefault(image.generation_id, []).append(image)
    return found


def _record(row: Generation, images: Sequence[Image] = ()) -> GenerationRecord:
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
