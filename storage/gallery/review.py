"""What people add to generations after the fact: stars, a review state with a note, tags and boards."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import RecordNotFound, StorageError
from storage.gallery.core import GalleryCore
from storage.gallery.rows import board_record
from storage.models import REVIEWS, Base, Board, BoardItem, Generation, Tag, utcnow
from storage.records import BoardRecord, GenerationRecord
from storage.validators import MAX_BOARD_NAME, check_flag, check_ids, check_note, check_tags, check_text, check_word


class Review(GalleryCore):
    def star(self, generation_id: int, *, starred: bool) -> GenerationRecord:
        check_flag(starred, field="starred")
        with Session(self._engine) as session, session.begin():
            _set(session, generation_id, starred=starred)
            return self._load(session, generation_id)

    def review(self, generation_id: int, *, state: str, note: str | None, by: str) -> GenerationRecord:
        """Set a generation's review state ("none" undoes one), with an optional note; records who and when."""
        check_word(state, REVIEWS, field="state")
        check_note(note)
        check_text(by, field="by")
        with Session(self._engine) as session, session.begin():
            _set(session, generation_id, review=state, review_note=note, reviewed_by=by, reviewed_at=utcnow())
            return self._load(session, generation_id)

    def add_tags(self, generation_id: int, tags: Iterable[str]) -> GenerationRecord:
        """Add tags to a generation; tags it already has stay as they are."""
        checked = check_tags(tags)
        with Session(self._engine) as session, session.begin():
            self._exists(session, generation_id)
            _insert_new(session, Tag, [{"generation_id": generation_id, "tag": tag} for tag in checked])
            return self._load(session, generation_id)

    def remove_tags(self, generation_id: int, tags: Iterable[str]) -> GenerationRecord:
        """Remove tags from a generation; tags it does not have are ignored."""
        checked = check_tags(tags)
        with Session(self._engine) as session, session.begin():
            self._exists(session, generation_id)
            if checked:
                session.execute(delete(Tag).where(Tag.generation_id == generation_id, Tag.tag.in_(checked)))
            return self._load(session, generation_id)

    def create_board(self, name: str, *, by: str) -> BoardRecord:
        check_text(name, field="name", longest=MAX_BOARD_NAME)
        check_text(by, field="by")
        taken = StorageError(f"A board named {name!r} already exists; choose another name.")
        try:
            with Session(self._engine) as session, session.begin():
                if session.scalar(select(Board.id).where(Board.name == name)) is not None:
                    raise taken
                row = Board(name=name, created_by=by, created_at=utcnow())
                session.add(row)
                session.flush()
                return board_record(row, size=0)
        except IntegrityError:  # created by another request between the check and the insert
            raise taken from None

    def add_to_board(self, board: str, generation_ids: Iterable[int]) -> BoardRecord:
        """Put generations on a board by its name; those already on it stay as they are."""
        ids = check_ids(generation_ids)
        with Session(self._engine) as session, session.begin():
            row = _board(session, board)
            found = set(session.scalars(select(Generation.id).where(Generation.id.in_(ids))))
            missing = [str(generation_id) for generation_id in ids if generation_id not in found]
            if missing:
                named = f"Generation {missing[0]} does" if len(missing) == 1 else f"Generations {', '.join(missing)} do"
                raise RecordNotFound(f"{named} not exist; nothing was added to {board!r}.")
            now = utcnow()
            _insert_new(session, BoardItem, [{"board_id": row.id, "generation_id": i, "added_at": now} for i in ids])
            return board_record(row, size=_board_size(session, row.id))

    def remove_from_board(self, board: str, generation_ids: Iterable[int]) -> BoardRecord:
        """Take generations off a board by its name; those not on it are ignored."""
        ids = check_ids(generation_ids)
        with Session(self._engine) as session, session.begin():
            row = _board(session, board)
            if ids:
                session.execute(delete(BoardItem).where(BoardItem.board_id == row.id, BoardItem.generation_id.in_(ids)))
            return board_record(row, size=_board_size(session, row.id))

    def boards(self) -> list[BoardRecord]:
        """Every board, by name."""
        query = (
            select(Board, func.count(BoardItem.generation_id))
            .outerjoin(BoardItem, BoardItem.board_id == Board.id)
            .group_by(Board.id)
            .order_by(Board.name)
        )
        with Session(self._engine) as session, session.begin():
            return [board_record(row, size=size) for row, size in session.execute(query)]


def _set(session: Session, generation_id: int, **values: Any) -> None:
    result = session.execute(
        update(Generation)
        .where(Generation.id == generation_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RecordNotFound(f"Generation {generation_id} does not exist.")


def _board(session: Session, name: str) -> Board:
    row = session.scalar(select(Board).where(Board.name == check_text(name, field="board")))
    if row is None:
        raise RecordNotFound(f"Board {name!r} does not exist.")
    return row


def _board_size(session: Session, board_id: int) -> int:
    return session.scalar(select(func.count()).where(BoardItem.board_id == board_id)) or 0


def _insert_new(session: Session, model: type[Base], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, skipping those whose key is already there (two people adding one tag both succeed)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}.get(dialect)
    if insert is None:
        raise StorageError(f"Tags and boards need SQLite or PostgreSQL; this gallery is on {dialect}.")
    session.execute(insert(model.__table__).on_conflict_do_nothing(), list(rows))
