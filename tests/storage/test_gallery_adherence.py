"""Prompt adherence in the gallery (issue 15): stored with a run's end, filtered, ordered, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from storage import Gallery, GenerationRecord, ImageInput, NewGeneration, SearchFilter, StorageError

NewFactory = Callable[..., NewGeneration]


def scored(score: float | None, **more: Any) -> dict[str, Any]:
    return {"score": score, "method": None if score is None else "embedded-world", "images": [], **more}


def made(gallery: Gallery, new: NewGeneration, adherence: dict[str, Any] | None) -> GenerationRecord:
    record = gallery.start(new)
    output = ImageInput("output", Image.new("RGB", (16, 16), "red"), seed=new.seed)
    return gallery.finish(record.id, images=[output], environment={}, timings={}, duration_ms=1, adherence=adherence)


def test_the_score_and_what_matched_land_with_the_images(any_gallery: Gallery, new_generation: NewFactory) -> None:
    checks = {"shape": {"asked": "circle", "seen": "square", "match": False}}
    detail = scored(0.5, images=[{"score": 0.5, "checks": checks}])
    record = made(any_gallery, new_generation(batch_size=1), detail)

    stored = any_gallery.get(record.id)
    assert stored == record
    assert stored.adherence == 0.5 and stored.adherence_detail == detail
    unscored = made(any_gallery, new_generation(batch_size=1), scored(None, reason="no CLIP model is configured"))
    assert unscored.adherence is None and unscored.adherence_detail["reason"] == "no CLIP model is configured"
    # A record ended without a scorer's word (older code, a failed run) has neither.
    old = made(any_gallery, new_generation(batch_size=1), None)
    assert (old.adherence, old.adherence_detail) == (None, None)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "high", True])
def test_a_score_outside_0_to_1_is_refused_and_nothing_is_written(
    any_gallery: Gallery, new_generation: NewFactory, bad: Any
) -> None:
    record = any_gallery.start(new_generation(batch_size=1))
    output = ImageInput("output", Image.new("RGB", (16, 16), "red"), seed=1)
    with pytest.raises(StorageError, match="adherence"):
        any_gallery.finish(
            record.id, images=[output], environment={}, timings={}, duration_ms=1, adherence={"score": bad}
        )
    assert any_gallery.get(record.id).status == "running" and any_gallery.get(record.id).images == ()


@pytest.fixture
def ranked(any_gallery: Gallery, new_generation: NewFactory) -> list[GenerationRecord]:
    scores = [0.5, None, 1.0, 0.0, 0.5, None, 0.75]
    return [
        made(any_gallery, new_generation(prompt=f"a {'red' if i % 2 else 'blue'} circle", seed=i), scored(score))
        for i, score in enumerate(scores)
    ]


def test_min_adherence_keeps_only_scores_at_or_above_it(any_gallery: Gallery, ranked: list[GenerationRecord]) -> None:
    found = any_gallery.search(min_adherence=0.5).records
    assert sorted(r.adherence for r in found) == [0.5, 0.5, 0.75, 1.0]
    assert any_gallery.count(SearchFilter(min_adherence=0.75)) == 2
    assert any_gallery.count(min_adherence=0) == 5  # the unscored never pass a minimum
    with pytest.raises(StorageError, match="min_adherence must be from 0 to 1"):
        any_gallery.search(min_adherence=2)


def test_order_by_adherence_pages_best_first_and_the_unscored_last(
    any_gallery: Gallery, ranked: list[GenerationRecord]
) -> None:
    ids = [r.id for r in ranked]
    expected = [ids[2], ids[6], ids[4], ids[0], ids[3], ids[5], ids[1]]  # ties and the unscored: newest first
    seen, cursor = [], None
    while True:
        page = any_gallery.search(order="adherence", limit=2, cursor=cursor)
        seen += [r.id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    # With words and a minimum: the text filters, the score orders.
    blues = any_gallery.search(text="blue", order="adherence", min_adherence=0.6).records
    assert [r.id for r in blues] == [ids[2], ids[6]]
    reds = any_gallery.search(text="red", order="adherence").records
    assert [r.id for r in reds] == [ids[3], ids[5], ids[1]]
    with pytest.raises(StorageError, match="order must be one of newest, adherence"):
        any_gallery.search(order="best")
    with pytest.raises(StorageError, match="ordered by adherence"):
        any_gallery.search(order="adherence", cursor="17")
