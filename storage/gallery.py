"""The gallery service: generation records and their image files, one short transaction per method."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import search
from storage.db import make_engine, upgrade
from storage.files import PNG_MODES, FileStore, StagedImage
from storage.models import REVIEWS, ROLES, Base, Board, BoardItem, Generation, Image, Tag, utcnow
from storage.pngmeta import png_text_chunks
from storage.records import (
    BoardRecord,
    GenerationRecord,
    ImageInput,
    ImageRecord,
    NewGeneration,
    NotAllowed,
    Page,
    RecordNotFound,
    StorageError,
)

log = logging.getLogger(__name__)

_MAX_SEED = 2**63 - 1  # BIGINT is signed
_MAX_LIST = 1000
_MAX_BOARD_NAME = 100
_MAX_NOTE = 10_000
_END_STATUSES = ("failed", "cancelled")


class Gallery:
    """Every generation and image a studio has made, in a database and a data folder.

    The default database is `sqlite:///<data_dir>/gallery.db`; PostgreSQL (for
    a team, with images on a shared folder) works the same. Full-text search
    and review state use features of those two (migration 0002), so other
    SQLAlchemy backends are not supported.
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
        _check_limit(limit)
        where = search.conditions(status=status)
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
        with Session(self._engine) as session, session.begin():
            if found:
                query = search.Ranked(session.get_bind().dialect.name, found, where).count()
            else:
                query = select(func.count()).select_from(Generation).where(*where)
            return session.scalar(query) or 0

    def children(self, generation_id: int) -> list[GenerationRecord]:
        """The reruns and variations made from a generation (rows whose parent it is), oldest first."""
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
        generation must end first. Returns the record as it was.
        """
        search.check_text(by, field="by")
        search.check_flag(is_admin, field="is_admin")
        # Files go with rows in the landing protocol's way, reversed (files.py):
        # mark the files, commit the deletion, then unlink what no row names.
        with self._landing, self._files.removing():
            with Session(self._engine) as session, session.begin():
                # 1. Check; nothing is written for a refused request.
                record = self._load(session, generation_id)
                if record.user != by and not is_admin:
                    raise NotAllowed(f"Only {record.user} or an admin may delete generation {generation_id}.")
                if record.status == "running":
                    raise StorageError(f"Generation {generation_id} is still running; cancel it before deleting it.")
                # 2. Mark its files, then delete the rows (cascading to images, tags, board items).
                shas = {image.sha256 for image in record.images}
                self._files.mark_for_removal(shas)
                session.execute(delete(Generation).where(Generation.id == generation_id))
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
