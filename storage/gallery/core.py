"""What every part of the gallery shares: its state, the lease rule every reader runs first, and the landing.

Gallery (service.py) is built from one class per concern (jobs.py, runs.py,
reads.py, review.py, delete.py), each a `GalleryCore`, so each can use the
shared state under the names declared here and nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.errors import RecordNotFound, StorageError
from storage.files import PNG_MODES, FileStore, StagedImage
from storage.gallery.rows import generation_record, image_row
from storage.models import ROLES, Board, BoardItem, Generation, Image, Tag
from storage.queue import INTERRUPTED, LeaseKeeper, lease_ran_out
from storage.records import GenerationRecord, ImageInput, NewGeneration
from storage.validators import check_seed, json_object

log = logging.getLogger(__name__)

# What _write_with_files hands its writer: stage(generation_id, image, position=, text=) -> the image's row.
Stage = Callable[..., Image]


class GalleryCore:
    """The state the gallery's parts share, set by Gallery.__init__ alone, and the methods they all use."""

    lease_seconds: float
    worker: str  # the lease owner of the jobs this gallery starts
    data_dir: Path
    _database: Database
    _engine: Engine
    _files: FileStore
    # Stage, commit and land run under one lock so that two threads landing
    # identical bytes never write the same pending name at once (the file
    # lock in FileStore.landing is shared, so it does not exclude threads).
    _landing: threading.Lock
    _leases: LeaseKeeper
    _clock: Callable[[], datetime]

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
            if session.scalar(select(Generation.id).where(lease_ran_out(now)).limit(1)) is None:
                return []
            ended = session.scalars(
                update(Generation)
                .where(lease_ran_out(now))
                .values(status="interrupted", finished_at=Generation.lease_expires_at, error=INTERRUPTED)
                .returning(Generation.id)
                .execution_options(synchronize_session=False)
            ).all()
        for generation_id in ended:
            self._leases.release(generation_id)
        if ended:
            log.info("Marked generations %s interrupted: their leases ran out.", ", ".join(map(str, sorted(ended))))
        return sorted(ended)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise StorageError("The gallery's clock must tell timezone-aware time.")
        return now

    def _write_with_files(self, write: Callable[[Session, Stage], GenerationRecord]) -> GenerationRecord:
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
            return image_row(generation_id, item, stored, position=position)

        committing = False
        with self._landing, self._files.landing():
            try:
                with Session(self._engine) as session, session.begin():
                    written = write(session, stage)
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
        return written

    @staticmethod
    def _exists(session: Session, generation_id: int) -> None:
        if session.scalar(select(Generation.id).where(Generation.id == generation_id)) is None:
            raise RecordNotFound(f"Generation {generation_id} does not exist.")

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
        return [
            generation_record(row, images.get(row.id, ()), tags.get(row.id, ()), boards.get(row.id, ())) for row in rows
        ]


def check_new(new: NewGeneration) -> dict[str, Any]:
    """Check a new generation's fields; returns its params as they will read back."""
    if not new.user:
        raise StorageError("user must not be empty.")
    check_seed(new.seed, field="seed")
    return json_object(new.params, field="params")


def check_images(images: Sequence[ImageInput]) -> None:
    for number, item in enumerate(images, start=1):
        if item.role not in ROLES:
            raise StorageError(f"Image {number} has role {item.role!r}; allowed roles are {', '.join(ROLES)}.")
        if item.image.mode not in PNG_MODES:
            raise StorageError(
                f"Image {number} has mode {item.image.mode}, which PNG cannot hold; allowed modes are "
                f"{', '.join(PNG_MODES)}."
            )
        if item.seed is not None:
            check_seed(item.seed, field=f"Image {number} seed")


def check_parent(session: Session, parent_id: int | None) -> None:
    if parent_id is not None and session.get(Generation, parent_id) is None:
        raise RecordNotFound(f"Parent generation {parent_id} does not exist.")


def referenced(session: Session, shas: Collection[str]) -> set[str]:
    """Which of these files some image row names."""
    if not shas:
        return set()
    return set(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas)).distinct()))


def in_order(session: Session, ids: Sequence[int]) -> list[Generation]:
    """The rows with these ids, in this order."""
    found = {row.id: row for row in session.scalars(select(Generation).where(Generation.id.in_(ids)))} if ids else {}
    return [found[generation_id] for generation_id in ids if generation_id in found]
