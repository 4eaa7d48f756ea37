"""Reading the gallery: one record, pages of records newest first, text search and counts.

Every read first marks the jobs whose lease ran out (GalleryCore.expire_leases),
so none shows a job running after its lease ran out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.gallery.core import GalleryCore, in_order
from storage.models import Generation
from storage.records import GenerationRecord, Page, SearchFilter
from storage.search import ORDERS, Cursor, Ranked, adherence_cursor, by_adherence, conditions, words
from storage.validators import check_limit, check_word


class Reads(GalleryCore):
    def get(self, generation_id: int) -> GenerationRecord:
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            return self._load(session, generation_id)

    def list(
        self, *, limit: int = 24, before_id: int | None = None, status: str | None = None
    ) -> list[GenerationRecord]:
        """Newest first, optionally only one status; pass a page's last id as `before_id` for the next."""
        check_limit(limit)
        where = conditions(SearchFilter(status=status))
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(_newest(where, before_id=before_id, limit=limit)).all()
            return self._records(session, rows)

    def search(
        self,
        chosen: SearchFilter | None = None,
        /,
        *,
        limit: int = 50,
        cursor: str | None = None,
        order: str = "newest",
        **filters: Any,
    ) -> Page:
        """Generations matching every filter given: newest first, or best match first when `text` has words.

        The filters are a SearchFilter, or its fields as keywords (`text=`,
        `task=`, `model=`, `user=`, `status=`, `starred=`, `review=`, `tag=`,
        `board=`, `created_from=`, `created_to=`). A generation matches
        `text` when its prompt or negative prompt holds every word of it (a
        word of three letters or more also as the start of a longer one);
        punctuation is ignored, so a text without letters or digits matches
        everything. The newest 1,000 text matches are ranked, older ones
        follow newest first. `created_from` is inclusive, `created_to`
        exclusive; `board` is a board's name. Pass a page's `next_cursor` as
        `cursor` for the next; storage/search.py says how the pages stay
        correct while the gallery changes. `order="adherence"` puts the best
        prompt adherence first (the unscored last), the text then only filters.
        """
        # 1. Check inputs.
        check_limit(limit)
        check_word(order, ORDERS, field="order")
        chosen = _filter(chosen, filters)
        where = conditions(chosen)
        found = words(chosen.text)
        if order == "adherence":
            return self._by_adherence(where, found, cursor=cursor, limit=limit)
        after = Cursor.decode(cursor, found)
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            # 2. The ids of one row more than the page, to tell whether there is a next page.
            if not found:
                before_id = None if after is None else after.generation_id
                rows = session.scalars(_newest(where, before_id=before_id, limit=limit + 1)).all()
                cursors = [Cursor(row.id) for row in rows]
            else:
                ranked = Ranked(self._database.dialect, found, where)
                cursors = _ranked(session, ranked, after, limit)
                rows = in_order(session, [c.generation_id for c in cursors[:limit]])
            # 3. The records, and where the next page starts.
            next_cursor = cursors[limit - 1].encode(found) if len(cursors) > limit else None
            return Page(records=tuple(self._records(session, rows[:limit])), next_cursor=next_cursor)

    def _by_adherence(
        self, where: list[ColumnElement[bool]], found: tuple[str, ...], *, cursor: str | None, limit: int
    ) -> Page:
        if found:
            where = [*where, Ranked(self._database.dialect, found, []).matching()]
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(by_adherence(where, after=cursor, limit=limit + 1)).all()
            last = rows[limit - 1] if len(rows) > limit else None
            next_cursor = None if last is None else adherence_cursor(last.adherence, last.id)
            return Page(records=tuple(self._records(session, rows[:limit])), next_cursor=next_cursor)

    def count(self, chosen: SearchFilter | None = None, /, **filters: Any) -> int:
        """How many generations `search` with the same filters (given the same ways) would page through."""
        chosen = _filter(chosen, filters)
        where = conditions(chosen)
        found = words(chosen.text)
        self.expire_leases()
        with Session(self._engine) as session, session.begin():
            if found:
                query = Ranked(self._database.dialect, found, where).count()
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


def _filter(chosen: SearchFilter | None, filters: dict[str, Any]) -> SearchFilter:
    """The filter given, as a SearchFilter or as its fields by keyword (an unknown one is a TypeError, as ever)."""
    if chosen is None:
        return SearchFilter(**filters)
    if not isinstance(chosen, SearchFilter):
        raise StorageError(f"The filter must be a SearchFilter, not {type(chosen).__name__}.")
    if filters:
        raise StorageError(f"Pass the filters as a SearchFilter or as keywords, not both: {', '.join(filters)} too.")
    return chosen


def _newest(where: Sequence[ColumnElement[bool]], *, before_id: int | None, limit: int) -> Any:
    # Keyset pagination: stable while new generations arrive, and as cheap on
    # page 100 as on page 1, which OFFSET is not.
    query = select(Generation).where(*where).order_by(Generation.id.desc()).limit(limit)
    return query if before_id is None else query.where(Generation.id < before_id)


def _ranked(session: Session, ranked: Ranked, after: Cursor | None, limit: int) -> list[Cursor]:
    """Positions of up to limit + 1 text matches after `after`: the ranked window, then older ones."""
    floor = session.scalar(ranked.window_floor()) if after is None else after.floor
    found: list[Cursor] = []
    if after is None or after.score is not None:
        anchor = None
        if after is not None and after.score is not None:
            # Continue after the last row shown as it scores now (see search.py).
            now = session.scalar(ranked.score_of(after.generation_id))
            anchor = (after.score if now is None else now, after.generation_id)
        found += [
            Cursor(generation_id, ranked=True, floor=floor, score=score)
            for generation_id, score in session.execute(ranked.best(floor=floor, after=anchor, limit=limit + 1))
        ]
    if len(found) <= limit and floor is not None:
        before_id = floor if after is None or after.score is not None else after.generation_id
        older = session.scalars(ranked.newest(before_id=before_id, limit=limit + 1 - len(found)))
        found += [Cursor(generation_id, ranked=True, floor=floor) for generation_id in older]
    return found
