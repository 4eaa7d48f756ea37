"""What a gallery search matches and in what order: filters, words, ranking and page cursors.

Hides the two full-text backends that migration 0002 builds: an FTS5 table
ranked by bm25 on SQLite, a GIN tsvector expression index ranked by ts_rank
on PostgreSQL.

Words. User text is only ever a list of words, the letters and digits both
backends index. Each word is quoted on its own and passed as a bound
parameter, so nothing a person types (`OR`, `NEAR(`, `*`, quotes, `--`) is
read as query syntax, by the full-text engine or by SQL. A generation matches
when its prompt or negative prompt holds every word, in any case; a word of
three or more characters also matches longer words it begins (`castle` finds
"castles"). Shorter words match only whole words: a one-letter prefix names
most of the vocabulary, and merging all of it would cost as much as reading
the whole gallery.

Ranking. The best match comes first, ties newest first. Ranking costs a score
per matching row, so it is bounded: the newest `RANK_WINDOW` generations that
match the text are ranked, and any older matches follow them, newest first.
A text that matches fewer (most do: every word must be there) is ranked
exactly; without the bound, a word found in most prompts would make every
page score the whole gallery: about 140 ms at 100,000 generations on SQLite
(docs/gallery-benchmark.md). Filters then pick among these rows; they never
change which rows are in the window.

Pages are keyset pages, never OFFSET, so page 1000 costs what page 1 does.
Newest first, the cursor is the last id shown. Ranked, it also holds the
window's oldest id (fixed by the first page) and the last row's score, and
the next page is "rows after (score, id) in the order score, id DESC" inside
the window, then the older rows by id. PostgreSQL's ts_rank depends on the
row alone, so that position stays exact while generations come and go.
SQLite's bm25 also weighs how rare each word is in the whole gallery, so
scores drift a little when rows are added or deleted; the next page therefore
starts from the *current* score of the last row shown, and continues after it
in the current order.

Query shape on SQLite: every text query reads the FTS5 table alone, with the
filters in a correlated EXISTS on `generations`. Written as a join, SQLite's
planner (without ANALYZE statistics it guesses ten rows per indexed value)
may drive the join from an index on `generations` and run the MATCH once per
row: seconds at 100,000 generations instead of milliseconds.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Double,
    Float,
    FromClause,
    Select,
    and_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    or_,
    select,
    table,
)

from storage.errors import StorageError
from storage.models import REVIEWS, SEARCH_TABLE, STATUSES, Board, BoardItem, Generation, Tag
from storage.records import SearchFilter
from storage.validators import check_flag, check_score, check_tag, check_text, check_time, check_word

MAX_TEXT = 500
ORDERS = ("newest", "adherence")  # how `Gallery.search` may order a page
RANK_WINDOW = 1000  # the newest this many text matches are ranked; older ones follow, newest first
_SHORTEST_PREFIX = 3
_WORD = re.compile(r"[^\W_]+")  # what FTS5's unicode61 tokenizer keeps: letters and digits

# A word in the negative prompt counts a quarter of one in the prompt.
_SQLITE_SCORE = f"bm25({SEARCH_TABLE}, 1.0, 0.25)"  # lower is better
_PG_WEIGHTS = "'{0, 0, 0.25, 1}'::float4[]"  # ts_rank's D, C, B, A; higher is better
# The expression of the GIN index in migration 0002: PostgreSQL uses an
# expression index only for the same expression.
_PG_VECTOR = (
    "(setweight(to_tsvector('simple'::regconfig, generations.prompt), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, generations.negative_prompt), 'B'))"
)


def words(text: str | None) -> tuple[str, ...]:
    """The words of a search text, each once, in order; () when it has none."""
    if text is None:
        return ()
    if not isinstance(text, str):
        raise StorageError(f"text must be a string, not {type(text).__name__}.")
    if len(text) > MAX_TEXT:
        raise StorageError(f"text must be at most {MAX_TEXT} characters, not {len(text)}.")
    # Case is left to each backend's tokenizer, which folds documents the same way.
    return tuple(dict.fromkeys(_WORD.findall(text)))


class Ranked:
    """The generations matching every word of a text and the filters; `score` is lower for a better match."""

    def __init__(self, dialect: str, found: tuple[str, ...], where: Sequence[ColumnElement[bool]]) -> None:
        if dialect == "sqlite":
            fts = table(SEARCH_TABLE, column("rowid"))
            # FTS5 query syntax: each word a quoted string ("" escapes a quote), * for
            # a prefix, AND between them (https://sqlite.org/fts5.html#full_text_query_syntax).
            query = " AND ".join(
                '"' + word.replace('"', '""') + ('"*' if len(word) >= _SHORTEST_PREFIX else '"') for word in found
            )
            self.id: ColumnElement[int] = fts.c.rowid
            self._source: FromClause = fts
            self._match: ColumnElement[Any] = literal_column(SEARCH_TABLE).op("MATCH")(bindparam("words", query))
            self.score: ColumnElement[float] = literal_column(_SQLITE_SCORE, Double)
            self._where = [self._match]
            if where:  # in a correlated EXISTS, so that the FTS table drives the query (see above)
                self._where.append(select(Generation.id).where(Generation.id == fts.c.rowid, *where).exists())
        elif dialect == "postgresql":
            # to_tsquery syntax: each word a quoted lexeme ('' and \\ escaped), :* for a
            # prefix, & between them. Not websearch_to_tsquery: it reads OR, - and
            # quotes in what people type as operators.
            query = " & ".join(
                "'" + word.replace("\\", "\\\\").replace("'", "''") + ("':*" if len(word) >= _SHORTEST_PREFIX else "'")
                for word in found
            )
            vector = literal_column(_PG_VECTOR)
            tsquery = func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("words", query))
            self.id = Generation.id
            self._source = Generation.__table__
            self._match = vector.op("@@")(tsquery)
            # ts_rank is a float4; as float8 it survives the round trip through a
            # cursor exactly, so the keyset comparison finds the same row again.
            self.score = cast(-func.ts_rank(literal_column(_PG_WEIGHTS), vector, tsquery, type_=Float), Double)
            self._where = [self._match, *where]
        else:
            raise StorageError(f"Text search needs SQLite or PostgreSQL; this gallery is on {dialect}.")

    def window_floor(self) -> Select[Any]:
        """The id of the RANK_WINDOW-th newest generation matching the text (filters aside); none if fewer match."""
        return (
            select(self.id)
            .select_from(self._source)
            .where(self._match)
            .order_by(self.id.desc())
            .offset(RANK_WINDOW - 1)
            .limit(1)
        )

    def best(self, *, floor: int | None, after: tuple[float, int] | None, limit: int) -> Select[Any]:
        """(id, score) of the best matches in the window, after the (score, id) given."""
        query = select(self.id, self.score).select_from(self._source).where(*self._where)
        if floor is not None:
            query = query.where(self.id >= floor)
        if after is not None:
            score, generation_id = after
            query = query.where(or_(self.score > score, and_(self.score == score, self.id < generation_id)))
        return query.order_by(self.score, self.id.desc()).limit(limit)

    def newest(self, *, before_id: int, limit: int) -> Select[Any]:
        """Ids of the matches older than `before_id`, newest first: what follows the window."""
        query = select(self.id).select_from(self._source).where(*self._where, self.id < before_id)
        return query.order_by(self.id.desc()).limit(limit)

    def score_of(self, generation_id: int) -> Select[Any]:
        """One row's current score; nothing when it no longer matches the text."""
        return select(self.score).select_from(self._source).where(self._match, self.id == generation_id)

    def count(self) -> Select[Any]:
        return select(func.count()).select_from(self._source).where(*self._where)

    def matching(self) -> ColumnElement[bool]:
        """The text as one more filter on `generations`, for an order other than the match's."""
        return Generation.id.in_(select(self.id).select_from(self._source).where(self._match))


def by_adherence(where: Sequence[ColumnElement[bool]], *, after: str | None, limit: int) -> Select[Any]:
    """Generations best adherence first, ties and the unscored (last) newest first; keyset after a cursor.

    The cursor is `adherence_cursor` of the last row shown: its score ("" when
    unscored) and id, so a page costs the same wherever it starts.
    """
    query = select(Generation).where(*where)
    if after is not None:
        score, generation_id = _decode_adherence(after)
        if score is None:
            query = query.where(Generation.adherence.is_(None), Generation.id < generation_id)
        else:
            query = query.where(
                or_(
                    Generation.adherence < score,
                    and_(Generation.adherence == score, Generation.id < generation_id),
                    Generation.adherence.is_(None),
                )
            )
    # NULLs last on both backends (SQLite puts them first, PostgreSQL last, for DESC without this).
    return query.order_by(Generation.adherence.is_(None), Generation.adherence.desc(), Generation.id.desc()).limit(
        limit
    )


def adherence_cursor(score: float | None, generation_id: int) -> str:
    return f"a:{'' if score is None else repr(score)}:{generation_id}"


def _decode_adherence(cursor: str) -> tuple[float | None, int]:
    parts = cursor.split(":") if isinstance(cursor, str) else []
    try:
        if len(parts) == 3 and parts[0] == "a":
            score = float(parts[1]) if parts[1] else None
            if score is None or math.isfinite(score):
                return score, int(parts[2])
    except ValueError:
        pass
    raise StorageError("cursor must be the next_cursor of a page of this same search (ordered by adherence).")


@dataclass(frozen=True)
class Cursor:
    """A position in a search's order; `encode` makes the opaque string callers pass back."""

    generation_id: int
    ranked: bool = False  # a text search: the fields below apply
    floor: int | None = None  # the window's oldest id; None when every match is in the window
    score: float | None = None  # None once past the window, in the newest-first rest

    def encode(self, found: tuple[str, ...]) -> str:
        if not self.ranked:
            return str(self.generation_id)
        floor = "" if self.floor is None else str(self.floor)
        score = "" if self.score is None else repr(self.score)
        return f"{_fingerprint(found)}:{floor}:{score}:{self.generation_id}"

    @staticmethod
    def decode(cursor: str | None, found: tuple[str, ...]) -> Cursor | None:
        if cursor is None:
            return None
        parts = cursor.split(":") if isinstance(cursor, str) else []
        try:
            if not found and len(parts) == 1:
                return Cursor(int(parts[0]))
            if found and len(parts) == 4 and parts[0] == _fingerprint(found):
                _, floor, score, generation_id = parts
                decoded = Cursor(
                    int(generation_id),
                    ranked=True,
                    floor=int(floor) if floor else None,
                    score=float(score) if score else None,
                )
                if (decoded.score is None or math.isfinite(decoded.score)) and (
                    decoded.score is not None or decoded.floor is not None
                ):
                    return decoded
        except ValueError:
            pass
        raise StorageError("cursor must be the next_cursor of a page of this same search (the same text).")


def _fingerprint(found: tuple[str, ...]) -> str:
    # A ranked cursor is a position in one text's order; this stops it being used for another.
    return hashlib.sha256("\0".join(found).encode()).hexdigest()[:8]


def conditions(chosen: SearchFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses for a filter's fields other than `text` (see `words` and `Ranked` for that)."""
    where: list[ColumnElement[bool]] = []
    for field, value, named in (("task", chosen.task, Generation.task), ("model", chosen.model, Generation.model)):
        if value is not None:
            where.append(named == check_text(value, field=field))
    if chosen.user is not None:
        where.append(Generation.user == check_text(chosen.user, field="user"))
    if chosen.status is not None:
        where.append(Generation.status == check_word(chosen.status, STATUSES, field="status"))
    if chosen.starred is not None:
        where.append(Generation.starred == check_flag(chosen.starred, field="starred"))
    if chosen.review is not None:
        where.append(Generation.review == check_word(chosen.review, REVIEWS, field="review"))
    if chosen.tag is not None:
        where.append(Generation.id.in_(select(Tag.generation_id).where(Tag.tag == check_tag(chosen.tag))))
    if chosen.board is not None:
        on_board = select(BoardItem.generation_id).join(Board, Board.id == BoardItem.board_id)
        where.append(Generation.id.in_(on_board.where(Board.name == check_text(chosen.board, field="board"))))
    if chosen.min_adherence is not None:
        where.append(Generation.adherence >= check_score(chosen.min_adherence, field="min_adherence"))
    created_from, created_to = chosen.created_from, chosen.created_to
    if created_from is not None:
        where.append(Generation.created_at >= check_time(created_from, field="created_from"))
    if created_to is not None:
        where.append(Generation.created_at < check_time(created_to, field="created_to"))
    if created_from is not None and created_to is not None and created_from >= created_to:
        raise StorageError(f"created_from ({created_from}) must be earlier than created_to ({created_to}).")
    return where
