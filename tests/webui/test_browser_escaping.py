"""Prompts, notes, tags and board names render as text in a real browser, never as HTML.

Records are made with markup in every field a person types; the gallery is
opened in Chromium (Debian's, via Playwright) and each text must be on the
page literally, with no element made from it and no script run.
`launched` (the app) and `page` (Chromium) come from conftest.py.
"""

from playwright.sync_api import Locator, Page, expect

from pipelines.requests import Text2ImgRequest

PROMPT = '<b>bold</b> <img src=x onerror="window.__pwned=1"> zebra'
NEGATIVE = "<script>window.__pwned=2</script> <i>blurry</i>"
SCRIPT_PROMPT = "<script>window.__pwned=2</script> okapi"
NOTE = '<b>bold note</b> <script>window.__pwned=3</script> <img src=x onerror="window.__pwned=4">'
# A backtick closes the Markdown code span a tag or board is shown in.
TAG = "`<b>boldtag</b>`"
BOARD = '`<b>boldboard</b>` <img src=x onerror="window.__pwned=5">'


def made(studio, prompt: str, negative: str = ""):
    return studio.submit(
        Text2ImgRequest(prompt=prompt, negative_prompt=negative, seed=5, width=64, height=64, num_inference_steps=2),
        user="ada",
    )


def assert_nothing_ran_or_was_made(page: Page) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    # No element from the markup: no <b> or <i> holding its words, no <img src=x>, no such <script>.
    for tag, words in (("b", "bold"), ("i", "blurry")):
        assert page.locator(tag).filter(has_text=words).count() == 0, tag
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("[...document.scripts].filter(s => s.textContent.includes('__pwned')).length") == 0


def block(page: Page, label: str) -> Locator:
    """A component by the label on its frame."""
    return page.locator(".block").filter(has=page.get_by_test_id("block-label").filter(has_text=label))


def open_record(page: Page, url: str, record_id: int) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Gallery").click()
    page.get_by_label("Record id").fill(str(record_id))
    page.get_by_role("button", name="Open", exact=True).click()
    expect(page.get_by_text(f"Record #{record_id}").first).to_be_visible(timeout=10_000)


def test_prompt_and_note_show_as_text_in_the_gallery(launched, page):
    studio, url = launched
    record = made(studio, PROMPT, NEGATIVE)
    other = made(studio, SCRIPT_PROMPT)
    studio.gallery.review(record.id, state="approved", note=NOTE, by="ada")

    page.goto(url)
    page.get_by_role("tab", name="Gallery").click()
    # The grid's captions: the prompts as typed.
    expect(page.get_by_text(f"#{record.id} · {PROMPT}", exact=True)).to_be_attached(timeout=10_000)
    expect(page.get_by_text(f"#{other.id} · {SCRIPT_PROMPT}", exact=True)).to_be_attached()
    assert_nothing_ran_or_was_made(page)

    # Open the record from the grid, as a person does.
    page.locator("#gallery-grid img").nth(1).click()
    expect(page.get_by_text(f"Record #{record.id}").first).to_be_visible(timeout=10_000)
    # The parameters show the prompt and negative prompt character for character.
    parameters = block(page, "Parameters")
    expect(parameters.get_by_text(PROMPT, exact=False)).to_be_visible()
    expect(parameters.get_by_text(NEGATIVE, exact=False)).to_be_visible()
    # The review note is the text box's value, as written.
    expect(page.get_by_label("Review note")).to_have_value(NOTE)
    assert_nothing_ran_or_was_made(page)

    open_record(page, url, other.id)
    expect(block(page, "Parameters").get_by_text(SCRIPT_PROMPT, exact=False)).to_be_visible()
    assert_nothing_ran_or_was_made(page)


def test_a_note_typed_in_the_browser_is_stored_and_shown_as_typed(launched, page):
    studio, url = launched
    record = made(studio, "a red circle on a blue background")
    open_record(page, url, record.id)
    page.get_by_label("Review note").fill(NOTE)
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("✅ approved").first).to_be_visible(timeout=10_000)
    assert studio.gallery.get(record.id).review_note == NOTE
    expect(page.get_by_label("Review note")).to_have_value(NOTE)
    assert_nothing_ran_or_was_made(page)


def test_tags_and_board_names_show_as_text(launched, page):
    studio, url = launched
    record = made(studio, "a green square on a red background")
    studio.gallery.add_tags(record.id, [TAG])
    studio.gallery.create_board(BOARD, by="ada")
    studio.gallery.add_to_board(BOARD, [record.id])
    open_record(page, url, record.id)
    description = page.locator(".prose").filter(has_text=f"Record #{record.id}")
    expect(description.get_by_text(TAG, exact=False)).to_be_visible()
    expect(description.get_by_text(BOARD, exact=False)).to_be_visible()
    for words in ("boldtag", "boldboard"):
        assert page.locator("b, strong").filter(has_text=words).count() == 0, words
    assert_nothing_ran_or_was_made(page)
