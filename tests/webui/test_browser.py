"""A real browser (Debian's Chromium driven by Playwright) using the studio."""

from playwright.sync_api import expect

from pipelines.requests import Text2ImgRequest

# `launched` (the app) and `page` (Chromium) come from conftest.py.


def test_type_a_prompt_generate_and_find_it_in_the_gallery(launched, page):
    studio, url = launched
    page.goto(url)
    page.get_by_label("Prompt", exact=True).fill("a purple triangle on a white background")
    page.get_by_label("Seed (-1: random)").fill("4242")
    page.get_by_role("button", name="Generate").click()

    # The image appears and the summary names the new record.
    expect(page.get_by_text("Record #")).to_be_visible(timeout=60_000)
    expect(page.locator("img[src*='.png']").first).to_be_visible()
    [record] = [r for r in studio.gallery.list() if r.seed == 4242]
    assert record.prompt == "a purple triangle on a white background"
    expect(page.get_by_text(f"Record #{record.id}")).to_be_visible()

    # The gallery tab lists it, newest first, without a manual refresh.
    page.get_by_role("tab", name="Gallery").click()
    expect(page.get_by_text(f"#{record.id} · a purple triangle").first).to_be_attached(timeout=10_000)


def test_a_64_bit_seed_typed_in_the_browser_is_kept_exactly(launched, page):
    """Issue 19: a number field would round 2**64 - 1 to a double; the seed box is text, so it is not."""
    studio, url = launched
    page.goto(url)
    page.get_by_label("Prompt", exact=True).fill("a green circle on a red background")
    page.get_by_label("Seed (-1: random)").fill(str(2**64 - 1))
    page.get_by_role("button", name="Generate").click()

    expect(page.get_by_text(f"seed {2**64 - 1}")).to_be_visible(timeout=60_000)
    [record] = [r for r in studio.gallery.list() if r.prompt == "a green circle on a red background"]
    assert record.seed == 2**64 - 1
    # Reuse last puts it back in the box, digit for digit.
    page.get_by_label("Seed (-1: random)").fill("-1")
    page.get_by_role("button", name="Reuse last").click()
    expect(page.get_by_label("Seed (-1: random)")).to_have_value(str(2**64 - 1))


def test_search_open_and_rerun_shows_identical(launched, page):
    studio, url = launched
    record = studio.submit(
        Text2ImgRequest(
            prompt="a black square on a yellow background", seed=99, width=64, height=64, num_inference_steps=4
        ),
        user="ada",
    )
    page.goto(url)
    page.get_by_role("tab", name="Gallery").click()
    page.get_by_label("Search prompts").fill("black square yellow")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("1–1 of 1")).to_be_visible(timeout=10_000)

    # Open the record from the grid, then rerun it.
    page.locator("#gallery-grid img").first.click()
    expect(page.get_by_text(f"Record #{record.id}", exact=False).first).to_be_visible(timeout=10_000)
    page.get_by_role("button", name="Rerun exactly").click()
    expect(page.get_by_text("identical", exact=False).first).to_be_visible(timeout=60_000)
    [child] = studio.gallery.children(record.id)
    assert [i.sha256 for i in child.outputs] == [i.sha256 for i in record.outputs]


def test_a_refusal_reads_as_its_sentence_not_a_bare_error_badge(launched, page):
    """Gradio shows only an "Error" badge for an unqueued event's gr.Error; the studio's are queued, so it reads."""
    studio, url = launched
    page.goto(url)
    page.get_by_role("tab", name="Gallery").click()
    page.get_by_label("Record id").fill("4242")
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_text("Generation 4242 does not exist.").first).to_be_visible(timeout=10_000)
    # Cancel with nothing running says so.
    page.get_by_role("tab", name="Text to image").click()
    page.get_by_role("tabpanel").get_by_role("button", name="Cancel").click()
    expect(page.get_by_text("Nothing is running or waiting in this tab.").first).to_be_visible(timeout=10_000)
