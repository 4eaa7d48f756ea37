"""Gallery.search and Gallery.count: filters, full-text ranking, keyset pages.

Each test runs on SQLite and on PostgreSQL (conftest's ``any_gallery``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from storage import Gallery, GenerationRecord, ImageInput, NewGeneration, SearchFilter, StorageError, search

NewFactory = Callable[..., NewGeneration]
UTC = timezone.utc


def make(gallery: Gallery, new_generation: NewFactory, **overrides: object) -> GenerationRecord:
    """A succeeded generation with one output image."""
    started = gallery.start(new_generation(**overrides))
    return gallery.finish(
        started.id,
        images=[ImageInput("output", Image.new("RGB", (8, 8), "red"), seed=started.seed)],
        environment={},
        timings={},
        duration_ms=1,
    )


def ids(records: object) -> list[int]:
    return [record.id for record in getattr(records, "records", records)]  # type: ignore[union-attr]


def every_page(gallery: Gallery, **query: object) -> list[list[int]]:
    """Follow next_cursor from the first page to the last."""
    pages: list[list[int]] = []
    cursor = None
    while True:
        page = gallery.search(cursor=cursor, **query)  # type: ignore[arg-type]
        pages.append(ids(page))
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


# -- filters ---------------------------------------------------------------


def test_each_filter_alone(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    plain = make(g, new_generation)
    img2img = make(g, new_generation, task="img2img", strength=0.5)
    other_model = make(g, new_generation, model="sd15")
    bob = make(g, new_generation, user="bob")
    running = g.start(new_generation())
    starred = g.star(make(g, new_generation).id, starred=True)
    approved = g.review(make(g, new_generation).id, state="approved", note=None, by="bob")
    rejected = g.review(make(g, new_generation).id, state="rejected", note="hands", by="bob")
    tagged = g.add_tags(make(g, new_generation).id, ["keeper"])
    boarded = make(g, new_generation)
    g.create_board("Poster", by="ann")
    g.add_to_board("Poster", [boarded.id])
    everything = [boarded, tagged, rejected, approved, starred, running, bob, other_model, img2img, plain]

    assert ids(g.search()) == ids(everything)
    assert ids(g.search(task="img2img")) == [img2img.id]
    assert ids(g.search(model="sd15")) == [other_model.id]
    assert ids(g.search(user="bob")) == [bob.id]
    assert ids(g.search(user="carol")) == []
    assert ids(g.search(status="running")) == [running.id]
    assert ids(g.search(status="succeeded")) == ids(e for e in everything if e is not running)
    assert ids(g.search(starred=True)) == [starred.id]
    assert len(ids(g.search(starred=False))) == len(everything) - 1
    assert ids(g.search(review="approved")) == [approved.id]
    assert ids(g.search(review="rejected")) == [rejected.id]
    assert ids(g.search(review="none")) == ids(e for e in everything if e not in (approved, rejected))
    assert ids(g.search(tag="keeper")) == [tagged.id]
    assert ids(g.search(tag="other")) == []
    assert ids(g.search(board="Poster")) == [boarded.id]
    assert ids(g.search(board="No such board")) == []


def test_created_range_is_from_inclusive_to_exclusive(any_gallery: Gallery, new_generation: NewFactory) -> None:
    first, second, third = (make(any_gallery, new_generation) for _ in range(3))

    assert ids(any_gallery.search(created_from=second.created_at)) == [third.id, second.id]
    assert ids(any_gallery.search(created_to=second.created_at)) == [first.id]
    assert ids(any_gallery.search(created_from=second.created_at, created_to=third.created_at)) == [second.id]
    # Any zone works; the range is compared in UTC.
    in_tokyo = second.created_at.astimezone(timezone(timedelta(hours=9)))
    assert ids(any_gallery.search(created_from=in_tokyo, created_to=third.created_at)) == [second.id]


def test_filters_combine_and_count_agrees(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    wanted = []
    for n in range(12):
        record = make(g, new_generation, task="img2img" if n % 2 else "txt2img", prompt=f"a fox number {n}")
        if n % 3 == 0:
            g.star(record.id, starred=True)
            if n % 2:
                wanted.append(record.id)

    assert ids(g.search(task="img2img", starred=True)) == wanted[::-1]
    assert g.count(task="img2img", starred=True) == len(wanted) == 2
    assert g.count() == 12 and g.count(starred=True) == 4 and g.count(text="fox") == 12
    assert g.count(text="fox", task="txt2img", starred=True) == 2
    assert g.count(text="wolf") == 0


def test_a_search_filter_reads_as_its_keywords(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    for n in range(6):
        record = make(g, new_generation, user="bob" if n % 2 else "ann", prompt=f"a fox number {n}")
        if n % 3 == 0:
            g.star(record.id, starred=True)
    chosen = SearchFilter(text="fox", user="bob", starred=True)

    assert ids(g.search(chosen)) == ids(g.search(text="fox", user="bob", starred=True)) != []
    assert g.count(chosen) == g.count(text="fox", user="bob", starred=True) == 1
    assert ids(g.search(SearchFilter(), limit=2)) == ids(g.search(limit=2))
    with pytest.raises(StorageError, match=r"^Pass the filters as a SearchFilter or as keywords, not both: user too"):
        g.search(chosen, user="ann")
    with pytest.raises(StorageError, match=r"^The filter must be a SearchFilter, not dict\.$"):
        g.count({"user": "bob"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="colour"):
        g.search(colour="red")


# -- keyset pages ------------------------------------------------------------


def test_pages_with_filters_follow_the_cursor_to_the_end(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    made = [make(g, new_generation, task="img2img" if n % 3 else "txt2img") for n in range(14)]
    wanted = [r.id for r in reversed(made) if r.task == "img2img"]  # 9 of them

    assert every_page(g, task="img2img", limit=4) == [wanted[0:4], wanted[4:8], wanted[8:9]]
    # An exact page count ends with next_cursor None, not with an empty page.
    assert every_page(g, task="txt2img", limit=5) == [[r.id for r in reversed(made) if r.task == "txt2img"]]


def test_new_generations_do_not_shift_later_pages(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    made = [make(g, new_generation).id for _ in range(6)]

    first = g.search(limit=3)
    make(g, new_generation)  # arrives while someone reads page 1
    second = g.search(limit=3, cursor=first.next_cursor)

    assert ids(first) + ids(second) == made[::-1]
    assert second.next_cursor is None


def test_list_still_pages_by_before_id(any_gallery: Gallery, new_generation: NewFactory) -> None:
    made = [make(any_gallery, new_generation).id for _ in range(5)]

    assert ids(any_gallery.list(limit=2, before_id=made[3])) == [made[2], made[1]]
    assert any_gallery.list(limit=1)[0] == any_gallery.search(limit=1).records[0] == any_gallery.get(made[-1])


# -- full-text search ----------------------------------------------------------


def test_text_matches_every_word_in_prompt_or_negative_prompt(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    castle = make(g, new_generation, prompt="A Red Castle at dusk", negative_prompt="blurry")
    castles = make(g, new_generation, prompt="two castles on a hill", negative_prompt="red, blurry")
    fox = make(g, new_generation, prompt="a fox in the snow", negative_prompt="castle")

    assert set(ids(g.search(text="castle"))) == {castle.id, castles.id, fox.id}  # "castle" starts "castles"
    assert ids(g.search(text="RED castle")) == [castle.id, castles.id]  # any case; prompt beats negative prompt
    assert ids(g.search(text="castle, snow!")) == [fox.id]  # punctuation is not a word
    assert ids(g.search(text="castles")) == [castles.id]  # a longer word is not a prefix of a shorter one
    assert ids(g.search(text="dragon castle")) == []  # every word must be there


def test_a_prompt_matching_twice_ranks_above_once(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    once = make(g, new_generation, prompt="red castle, blue sky", negative_prompt="")
    twice = make(g, new_generation, prompt="red castle, red sky", negative_prompt="")
    in_negative = make(g, new_generation, prompt="green castle, blue sky", negative_prompt="red")
    make(g, new_generation, prompt="green field, blue sky", negative_prompt="")

    assert ids(g.search(text="red")) == [twice.id, once.id, in_negative.id]
    # Newest first again once the text is gone.
    assert ids(g.search(text="  ")) == ids(g.search())


def test_ranked_pages_cover_every_match_once_with_ties_newest_first(
    any_gallery: Gallery, new_generation: NewFactory
) -> None:
    g = any_gallery
    same = [make(g, new_generation, prompt="a red fox").id for _ in range(5)]  # identical scores
    better = make(g, new_generation, prompt="a red fox, red fox").id
    make(g, new_generation, prompt="a grey wolf")

    pages = every_page(g, text="red fox", limit=2)

    assert pages == [[better, same[4]], [same[3], same[2]], [same[1], same[0]]]


def test_ranked_pages_continue_correctly_while_the_gallery_changes(
    any_gallery: Gallery, new_generation: NewFactory
) -> None:
    # bm25 weighs a word by how rare it is in the whole gallery, so these
    # additions move every score; the pages must still not repeat or skip.
    g = any_gallery
    twice = [make(g, new_generation, prompt="red castle red", negative_prompt="").id for _ in range(3)]
    once = [make(g, new_generation, prompt="red castle sky", negative_prompt="").id for _ in range(3)]

    first = g.search(text="red", limit=2)
    for _ in range(20):
        make(g, new_generation, prompt="green field sky", negative_prompt="")
    second = g.search(text="red", limit=2, cursor=first.next_cursor)
    rest = g.search(text="red", limit=10, cursor=second.next_cursor)

    assert ids(first) + ids(second) + ids(rest) == twice[::-1] + once[::-1]
    assert rest.next_cursor is None


def test_short_words_match_whole_words_only(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    apple = make(g, new_generation, prompt="an apple on a table", negative_prompt="")
    ant = make(g, new_generation, prompt="ant hill", negative_prompt="")

    assert ids(g.search(text="a")) == [apple.id]  # not "an", "ant" or "apple"
    assert ids(g.search(text="an")) == [apple.id]
    assert ids(g.search(text="ant")) == [ant.id]  # three letters and more: also the start of a word
    assert ids(g.search(text="app")) == [apple.id]


def test_only_the_newest_matches_are_ranked_and_older_ones_follow(
    any_gallery: Gallery, new_generation: NewFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "RANK_WINDOW", 3)
    g = any_gallery
    prompts = ["red red red fox", "red fox", "red fox", "red red fox", "red fox", "red red red fox", "blue fox"]
    made = [make(g, new_generation, prompt=prompt, negative_prompt="").id for prompt in prompts]
    g.star(made[0], starred=True)
    g.star(made[5], starred=True)

    # The newest three matches ranked (strong, medium, weak), then the older ones newest first.
    assert every_page(g, text="red", limit=2) == [[made[5], made[3]], [made[4], made[2]], [made[1], made[0]]]
    assert every_page(g, text="red", starred=True, limit=1) == [[made[5]], [made[0]]]
    assert g.count(text="red") == 6


@pytest.mark.parametrize(
    "hostile",
    [
        'red" OR 1=1 --',
        "NEAR(",
        "NEAR(red castle)",
        "*",
        'red*"',
        "red OR blue",
        "-red",
        "prompt:red",
        "{prompt negative_prompt}: red",
        "^red",
        "'; DROP TABLE generations; --",
        "red' | 'blue",
        "red & !blue <-> sky",
        "\\",
        "%_%",
        "red\x00castle",
        "AND OR NOT",
        "()",
        "",
    ],
)
def test_hostile_text_is_only_ever_words(any_gallery: Gallery, new_generation: NewFactory, hostile: str) -> None:
    g = any_gallery
    red = make(g, new_generation, prompt="red castle", negative_prompt="")
    blue = make(g, new_generation, prompt="blue castle", negative_prompt="")

    found = set(ids(g.search(text=hostile)))

    words = {w.lower() for w in hostile.replace("\x00", " ").split()}
    # Either no words (everything, newest first) or only rows holding them all.
    assert found <= {red.id, blue.id}
    if found == {red.id, blue.id}:
        assert not any(c.isalnum() for c in hostile)
    assert g.count(text=hostile) == len(found)
    if "or" in words or "near" in words or "drop" in words:
        assert found == set()  # OR and NEAR are words here, and neither prompt has them
    assert g.count() == 2  # and nothing was dropped


def test_text_and_filters_together_page_by_rank(any_gallery: Gallery, new_generation: NewFactory) -> None:
    g = any_gallery
    hits = []
    for n in range(8):
        prompt = "red fox, red tail" if n % 2 else "red fox"
        record = make(g, new_generation, prompt=prompt, user="bob" if n < 6 else "ann")
        if n < 6:
            hits.append(record)
    strong = [r.id for r in reversed(hits) if "tail" in r.prompt]
    weak = [r.id for r in reversed(hits) if "tail" not in r.prompt]

    pages = every_page(g, text="red", user="bob", limit=4)

    assert pages == [strong + weak[:1], weak[1:]]


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": 0}, r"^limit must be between 1 and 1000, not 0\.$"),
        (
            {"status": "done"},
            r"^status must be one of queued, running, succeeded, failed, cancelled, interrupted, not 'done'\.$",
        ),
        ({"review": "maybe"}, r"^review must be one of none, approved, rejected, not 'maybe'\.$"),
        ({"starred": "yes"}, r"^starred must be True or False, not 'yes'\.$"),
        ({"task": ""}, r"^task must not be empty\.$"),
        ({"tag": "a,b"}, r"^tag 'a,b' must not contain a comma; pass each tag on its own\.$"),
        ({"created_from": datetime(2025, 1, 1)}, r"^created_from must be a timezone-aware datetime"),
        (
            {"created_from": datetime(2025, 1, 2, tzinfo=UTC), "created_to": datetime(2025, 1, 1, tzinfo=UTC)},
            r"^created_from \(2025-01-02 00:00:00\+00:00\) must be earlier than created_to",
        ),
        ({"text": "x" * 501}, r"^text must be at most 500 characters, not 501\.$"),
        ({"cursor": "seven"}, r"^cursor must be the next_cursor of a page of this same search \(the same text\)\.$"),
        ({"cursor": "1:2:3"}, r"^cursor must be the next_cursor"),
        ({"text": "red", "cursor": "12"}, r"^cursor must be the next_cursor"),
    ],
)
def test_bad_queries_are_named_in_one_sentence(
    any_gallery: Gallery, new_generation: NewFactory, query: dict[str, object], message: str
) -> None:
    make(any_gallery, new_generation)
    with pytest.raises(StorageError, match=message):
        any_gallery.search(**query)  # type: ignore[arg-type]


def test_a_ranked_cursor_belongs_to_its_text(any_gallery: Gallery, new_generation: NewFactory) -> None:
    for _ in range(3):
        make(any_gallery, new_generation, prompt="red castle")

    page = any_gallery.search(text="red", limit=1)

    assert page.next_cursor is not None
    assert len(any_gallery.search(text="red", limit=1, cursor=page.next_cursor).records) == 1
    with pytest.raises(StorageError, match="same text"):
        any_gallery.search(text="castle", limit=1, cursor=page.next_cursor)
    with pytest.raises(StorageError, match="same text"):
        any_gallery.search(limit=1, cursor=page.next_cursor)
