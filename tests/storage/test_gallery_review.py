"""Review state: stars, approve/reject with notes, tags, boards, and a generation's children.

Each test runs on SQLite and on PostgreSQL (conftest's ``any_gallery``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from storage import BoardRecord, Gallery, GenerationRecord, NewGeneration, RecordNotFound, StorageError

NewFactory = Callable[..., NewGeneration]


def test_a_new_generation_is_unreviewed(any_gallery: Gallery, new_generation: NewFactory) -> None:
    record = any_gallery.start(new_generation())

    assert (record.starred, record.review, record.review_note, record.reviewed_by, record.reviewed_at) == (
        False,
        "none",
        None,
        None,
        None,
    )
    assert (record.tags, record.boards) == ((), ())
    assert any_gallery.get(record.id) == record


def test_star_and_unstar(any_gallery: Gallery, new_generation: NewFactory) -> None:
    record = any_gallery.start(new_generation())

    starred = any_gallery.star(record.id, starred=True)

    assert starred.starred is True
    assert starred == any_gallery.get(record.id)
    assert any_gallery.star(record.id, starred=False).starred is False
    with pytest.raises(RecordNotFound, match=r"^Generation 99 does not exist\.$"):
        any_gallery.star(99, starred=True)
    with pytest.raises(StorageError, match=r"^starred must be True or False, not 1\.$"):
        any_gallery.star(record.id, starred=1)  # type: ignore[arg-type]


def test_review_records_state_note_who_and_when(any_gallery: Gallery, new_generation: NewFactory) -> None:
    record = any_gallery.start(new_generation())
    before = datetime.now(timezone.utc)

    reviewed = any_gallery.review(record.id, state="rejected", note="six fingers", by="bob")

    assert (reviewed.review, reviewed.review_note, reviewed.reviewed_by) == ("rejected", "six fingers", "bob")
    assert reviewed.reviewed_at is not None and reviewed.reviewed_at >= before
    assert reviewed.reviewed_at.tzinfo == timezone.utc
    assert reviewed == any_gallery.get(record.id)
    # The rest of the record is untouched.
    assert reviewed.prompt == record.prompt and reviewed.params == record.params

    undone = any_gallery.review(record.id, state="none", note=None, by="ann")
    assert (undone.review, undone.review_note, undone.reviewed_by) == ("none", None, "ann")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"state": "maybe", "note": None, "by": "bob"}, r"^state must be one of none, approved, rejected, not 'maybe'"),
        ({"state": "approved", "note": None, "by": ""}, r"^by must not be empty\.$"),
        ({"state": "approved", "note": 5, "by": "bob"}, r"^note must be a string or None, not int\.$"),
        ({"state": "approved", "note": "x" * 10_001, "by": "bob"}, r"^note must be at most 10000 characters"),
    ],
)
def test_review_refuses_bad_input_and_writes_nothing(
    any_gallery: Gallery, new_generation: NewFactory, kwargs: dict[str, object], message: str
) -> None:
    record = any_gallery.start(new_generation())

    with pytest.raises(StorageError, match=message):
        any_gallery.review(record.id, **kwargs)  # type: ignore[arg-type]

    assert any_gallery.get(record.id) == record


def test_tags_are_added_once_removed_and_sorted(any_gallery: Gallery, new_generation: NewFactory) -> None:
    record = any_gallery.start(new_generation())
    other = any_gallery.start(new_generation())

    assert any_gallery.add_tags(record.id, ["sky", "Castle", "sky"]).tags == ("Castle", "sky")
    assert any_gallery.add_tags(record.id, ["sky", "night sky"]).tags == ("Castle", "night sky", "sky")
    any_gallery.add_tags(other.id, ["sky"])
    assert any_gallery.remove_tags(record.id, ["sky", "never there"]).tags == ("Castle", "night sky")
    assert any_gallery.get(other.id).tags == ("sky",)
    assert [r.id for r in any_gallery.search(tag="sky").records] == [other.id]
    assert any_gallery.add_tags(record.id, []).tags == ("Castle", "night sky")


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ("sky", r"^tags must be a list of tags, not str\.$"),
        (["ok", ""], r"^tag must not be empty\.$"),
        (["ok", " sky"], r"^tag ' sky' must not begin or end with spaces\.$"),
        (["ok", "a,b"], r"^tag 'a,b' must not contain a comma; pass each tag on its own\.$"),
        (["ok", "x" * 65], r"^tag must be at most 64 characters, not 65\.$"),
        (["ok", "a\nb"], r"^tag 'a\\nb' must not contain control characters\.$"),
        (["ok", 3], r"^tag must be a string, not int\.$"),
    ],
)
def test_bad_tags_are_refused_and_none_is_written(
    any_gallery: Gallery, new_generation: NewFactory, tags: object, message: str
) -> None:
    record = any_gallery.start(new_generation())

    with pytest.raises(StorageError, match=message):
        any_gallery.add_tags(record.id, tags)  # type: ignore[arg-type]

    assert any_gallery.get(record.id).tags == ()
    with pytest.raises(RecordNotFound, match=r"^Generation 99 does not exist\.$"):
        any_gallery.add_tags(99, ["ok"])


def test_boards_hold_generations(any_gallery: Gallery, new_generation: NewFactory) -> None:
    first, second, third = (any_gallery.start(new_generation()) for _ in range(3))

    poster = any_gallery.create_board("Poster", by="ann")
    any_gallery.create_board("Album cover", by="bob")

    assert (poster.name, poster.created_by, poster.size) == ("Poster", "ann", 0)
    assert poster.created_at.tzinfo == timezone.utc
    assert any_gallery.add_to_board("Poster", [first.id, second.id, first.id]).size == 2
    assert any_gallery.add_to_board("Poster", [second.id, third.id]).size == 3  # second was already there
    assert any_gallery.add_to_board("Album cover", [second.id]).size == 1
    assert any_gallery.remove_from_board("Poster", [third.id, 12345]).size == 2
    assert [(b.name, b.size) for b in any_gallery.boards()] == [("Album cover", 1), ("Poster", 2)]
    assert any_gallery.get(second.id).boards == ("Album cover", "Poster")
    assert any_gallery.get(third.id).boards == ()
    assert [r.id for r in any_gallery.search(board="Poster").records] == [second.id, first.id]


def test_board_mistakes_are_named_and_nothing_is_written(any_gallery: Gallery, new_generation: NewFactory) -> None:
    record = any_gallery.start(new_generation())
    any_gallery.create_board("Poster", by="ann")

    with pytest.raises(StorageError, match=r"^A board named 'Poster' already exists; choose another name\.$"):
        any_gallery.create_board("Poster", by="bob")
    with pytest.raises(StorageError, match=r"^name must not be empty\.$"):
        any_gallery.create_board(" ", by="bob")
    with pytest.raises(StorageError, match=r"^name must be at most 100 characters, not 101\.$"):
        any_gallery.create_board("x" * 101, by="bob")
    with pytest.raises(RecordNotFound, match=r"^Board 'Posters' does not exist\.$"):
        any_gallery.add_to_board("Posters", [record.id])
    with pytest.raises(RecordNotFound, match=r"^Generations 98, 99 do not exist; nothing was added to 'Poster'\.$"):
        any_gallery.add_to_board("Poster", [record.id, 98, 99])
    with pytest.raises(StorageError, match=r"^generation_ids must hold whole numbers, not '1'\.$"):
        any_gallery.add_to_board("Poster", ["1"])  # type: ignore[list-item]

    assert [(b.name, b.size) for b in any_gallery.boards()] == [("Poster", 0)]
    assert any_gallery.get(record.id).boards == ()


def test_children_are_the_reruns_of_a_generation(any_gallery: Gallery, new_generation: NewFactory) -> None:
    parent = any_gallery.start(new_generation())
    first = any_gallery.start(new_generation(parent_id=parent.id, seed=1))
    any_gallery.start(new_generation())
    second = any_gallery.start(new_generation(parent_id=parent.id, seed=2))
    grandchild = any_gallery.start(new_generation(parent_id=first.id))

    assert [c.id for c in any_gallery.children(parent.id)] == [first.id, second.id]
    assert any_gallery.children(first.id) == [grandchild]
    assert any_gallery.children(second.id) == []
    with pytest.raises(RecordNotFound, match=r"^Generation 99 does not exist\.$"):
        any_gallery.children(99)


def test_listed_records_carry_their_review_state(any_gallery: Gallery, new_generation: NewFactory) -> None:
    record = any_gallery.start(new_generation())
    any_gallery.star(record.id, starred=True)
    any_gallery.add_tags(record.id, ["keeper"])
    any_gallery.create_board("Poster", by="ann")
    any_gallery.add_to_board("Poster", [record.id])
    expected: GenerationRecord = any_gallery.review(record.id, state="approved", note="yes", by="bob")

    assert any_gallery.list() == [expected]
    assert any_gallery.search().records == (expected,)
    assert (expected.starred, expected.tags, expected.boards) == (True, ("keeper",), ("Poster",))
    assert isinstance(any_gallery.boards()[0], BoardRecord)
