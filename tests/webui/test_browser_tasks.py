"""The image tabs in a real browser: upload, paint the mask, generate, read the picture back.

Each test works the page as a person would (file chooser, typing, the mouse on
the mask editor's canvas) with the embedded model, whose flat shapes let the
picture be checked by its pixels (`classify`), and then reads the gallery
record the run left. `launched` (the app) and `page` (Chromium) come from
conftest.py.
"""

import io
import re

import cv2
import numpy as np
from PIL import Image, ImageDraw
from playwright.sync_api import Locator, Page, expect

from pipelines import masks
from pipelines.embedded.world import COLOURS, Scene, classify, render
from pipelines.limits import DEFAULT_MATTE_BAND
from webui.forms import automatic_mask

RUN_TIMEOUT = 120_000  # ms; the first run loads the model, on two shared cores
MAGENTA = np.array([255, 0, 255])


# -- what a person does ----------------------------------------------------------------


def draw(tmp_path, name: str, scene: Scene, size: int = 64) -> tuple[np.ndarray, str]:
    """A picture of the embedded model's world, saved as a PNG to upload."""
    pixels = render(scene, size)
    path = tmp_path / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return pixels, str(path)


def open_tab(page: Page, url: str, name: str) -> Locator:
    page.goto(url)
    page.get_by_role("tab", name=name).click()
    panel = page.get_by_role("tabpanel")  # only the open tab's panel is visible
    expect(panel).to_have_count(1)
    return panel


def block(panel: Locator, label: str) -> Locator:
    """A component by the label shown on its frame (images, galleries, the editor)."""
    return panel.locator(".block").filter(has=panel.page.get_by_test_id("block-label").filter(has_text=label))


def upload(page: Page, panel: Locator, label: str, path: str) -> None:
    with page.expect_file_chooser() as chooser:
        block(panel, label).get_by_role("button", name="Drop an image file here to upload").click()
    chooser.value.set_files(path)


def generate(studio, panel: Locator):
    """Press Generate, wait for the summary, and return the record it names."""
    panel.get_by_role("button", name="Generate").click()
    summary = panel.get_by_text(re.compile(r"Record #\d+"))
    expect(summary).to_be_visible(timeout=RUN_TIMEOUT)
    record = studio.gallery.get(int(re.search(r"Record #(\d+)", summary.inner_text()).group(1)))
    assert record.status == "succeeded", record
    return record


def fetched(page: Page, image: Locator) -> np.ndarray:
    """The pixels of an <img> on the page, as the browser received them."""
    response = page.request.get(image.get_attribute("src"))
    assert response.ok, response.status
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def shown_images(page: Page, panel: Locator, count: int) -> list[np.ndarray]:
    images = block(panel, "Images").locator("img")
    expect(images).to_have_count(count, timeout=10_000)
    return [fetched(page, images.nth(i)) for i in range(count)]


def stored(studio, record, role: str) -> list[np.ndarray]:
    images = [image for image in record.images if image.role == role]
    images.sort(key=lambda image: image.position)
    return [np.asarray(Image.open(studio.gallery.path(image.path))) for image in images]


def gallery_lists(page: Page, record) -> None:
    """The gallery tab shows the new record without a manual refresh."""
    page.get_by_role("tab", name="Gallery").click()
    first_words = record.prompt.split("\n")[0][:20]
    expect(page.get_by_text(f"#{record.id} · {first_words}").first).to_be_attached(timeout=10_000)


# -- Image to image --------------------------------------------------------------------


def test_image_to_image_repaints_the_background_asked_for(launched, page, tmp_path):
    studio, url = launched
    photo, path = draw(tmp_path, "start", Scene("circle", "yellow", "blue", 0.22, 0.35, 0.4))
    panel = open_tab(page, url, "Image to image")

    upload(page, panel, "Start from", path)
    expect(block(panel, "Start from").locator("img")).to_be_visible()
    panel.get_by_label("Prompt", exact=True).fill("a yellow circle on a red background")
    panel.get_by_role("spinbutton", name="number input for Strength (0: keep, 1: replace)").fill("0.8")
    panel.get_by_label("Seed (-1: random)").fill("2")
    record = generate(studio, panel)

    assert record.task == "img2img"
    assert (record.seed, record.params["strength"]) == (2, 0.8)
    [given] = stored(studio, record, "input")
    assert np.array_equal(given, photo), "the stored input is not the uploaded picture"
    # The picture on the page is the stored one, and it has the asked background.
    [shown] = shown_images(page, panel, 1)
    [output] = stored(studio, record, "output")
    assert np.array_equal(shown, output)
    reading = classify(shown)
    assert (reading.background, reading.colour, reading.shape) == ("red", "yellow", "circle")
    gallery_lists(page, record)


def test_image_to_image_takes_a_lora_copied_in_while_the_studio_runs(launched, page, tmp_path):
    from .conftest import save_lora

    studio, url = launched
    _, path = draw(tmp_path, "start", Scene("square", "red", "blue", 0.22, 0.5, 0.5))
    panel = open_tab(page, url, "Image to image")
    folder = studio.settings.loras_folder
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(folder / "house-style.safetensors", studio.engine.load("embedded").base, seed=3)

    upload(page, panel, "Start from", path)
    panel.get_by_label("Prompt", exact=True).fill("a red square on a white background")
    panel.get_by_text("Style: LoRAs and a reference image").click()
    panel.get_by_label(re.compile(r"^LoRAs \(")).click()  # the list is read again as it opens
    page.get_by_role("option", name="house-style").click()
    panel.get_by_label("Their weights, in order (default 1)").fill("0.8")
    record = generate(studio, panel)

    assert record.params["loras"] == [["house-style", 0.8]]
    assert record.environment["loras"][0]["name"] == "house-style"


# -- Product background ----------------------------------------------------------------


class Canvas:
    """The mask editor's canvas, and where each photo pixel is drawn on it.

    The editor centres the photo at the zoom it shows ("450%"); a photo pixel
    (x, y) covers the screen square from (left + x * scale) to one scale further.
    """

    def __init__(self, editor: Locator, size: tuple[int, int]):
        self.editor, self.size = editor, size
        self.canvas = editor.locator("canvas").first
        self.measure()

    def measure(self) -> None:
        """Read the zoom and the canvas's place again (both change while a photo loads)."""
        zoom = self.editor.get_by_role("button", name=re.compile(r"^\d+(\.\d+)?%$"))
        self.scale = float(zoom.inner_text().rstrip("%")) / 100
        self.box = self.canvas.bounding_box()
        self.left = self.box["x"] + (self.box["width"] - self.size[0] * self.scale) / 2
        self.top = self.box["y"] + (self.box["height"] - self.size[1] * self.scale) / 2

    def point(self, x: float, y: float) -> tuple[float, float]:
        """The screen point at the centre of photo pixel (x, y)."""
        return self.left + (x + 0.5) * self.scale, self.top + (y + 0.5) * self.scale

    def seen(self) -> np.ndarray:
        """What the canvas shows at the centre of each photo pixel, as an RGB array of the photo's size."""
        shot = np.asarray(Image.open(io.BytesIO(self.canvas.screenshot())).convert("RGB"))
        xs = [int(self.point(x, 0)[0] - self.box["x"]) for x in range(self.size[0])]
        ys = [int(self.point(0, y)[1] - self.box["y"]) for y in range(self.size[1])]
        return shot[np.ix_(ys, xs)]

    def seen_once(self, ready, timeout_ms: int = 30_000) -> np.ndarray:
        """What the canvas shows once `ready(seen)` holds (it draws a layer some frames after it arrives), or at the timeout."""
        page = self.canvas.page
        for _ in range(timeout_ms // 250):
            self.measure()
            seen = self.seen()
            if ready(seen):
                break
            page.wait_for_timeout(250)
        return seen


def near(pixels: np.ndarray, colour) -> np.ndarray:
    return np.abs(pixels.astype(int) - np.asarray(colour)).max(axis=-1) <= 40


def distance_to_segment(shape: tuple[int, int], start, end) -> np.ndarray:
    """Each pixel centre's distance to the segment from start to end (pixel coordinates)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    (x0, y0), (x1, y1) = start, end
    along = np.clip(((xs - x0) * (x1 - x0) + (ys - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
    return np.hypot(xs - (x0 + along * (x1 - x0)), ys - (y0 + along * (y1 - y0)))


def test_product_background_keeps_the_product_and_the_painted_mask(launched, page, tmp_path):
    studio, url = launched
    photo, path = draw(tmp_path, "product", Scene("square", "red", "blue", 0.22, 0.5, 0.5))
    automatic, _ = automatic_mask(Image.fromarray(photo))
    background = np.asarray(automatic) > 127  # white: repainted
    product = np.all(photo == COLOURS["red"], axis=-1)
    panel = open_tab(page, url, "Product background")

    # 1. Uploading finds the product: the preview and the editor show the background in magenta.
    #    A larger photo first, replaced: the editor must fit its mask to the photo it shows now.
    _, larger = draw(tmp_path, "larger", Scene("circle", "green", "white", 0.3, 0.5, 0.5), size=96)
    upload(page, panel, "Product photo", larger)
    expect(panel.get_by_text("Product found by")).to_be_visible(timeout=30_000)
    block(panel, "Product photo").get_by_role("button", name="Remove Image").click()
    upload(page, panel, "Product photo", path)
    expect(block(panel, "What will change (magenta)").locator("img")).to_be_visible()
    editor = block(panel, "Magenta = new background")
    # The editor smooths the zoomed photo, so the product is checked away from its edges.
    inside = cv2.erode(product.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

    def magenta_background(seen):
        return near(seen[background], MAGENTA).mean() > 0.97

    def red_product(seen):
        return near(seen[inside], COLOURS["red"]).all()

    canvas = Canvas(editor, (64, 64))
    seen = canvas.seen_once(lambda seen: magenta_background(seen) and red_product(seen))
    assert magenta_background(seen), "the editor does not show the found background in magenta"
    assert red_product(seen), "the editor does not show this photo's product"
    # The preview beside it tints the same region (a lossy WebP: compared away from the edge).
    preview = fetched(page, block(panel, "What will change (magenta)").locator("img"))
    tinted = np.asarray(masks.overlay(Image.fromarray(photo), automatic))
    calm = cv2.erode(background.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) | inside
    assert preview.shape == tinted.shape and near(preview[calm], tinted[calm]).all()

    # 2. Paint a stroke across the top of the product: that part is repainted too.
    start, end = (24, 24), (40, 24)
    page.mouse.move(*canvas.point(*start))
    page.mouse.down()
    for x in range(start[0], end[0] + 1, 2):
        page.mouse.move(*canvas.point(x, start[1]))
    page.mouse.up()
    painted_on_screen = near(canvas.seen_once(lambda seen: near(seen[24, 24:41], MAGENTA).all()), MAGENTA)
    assert painted_on_screen[24, 24:41].all(), "the stroke does not show on the canvas"
    assert painted_on_screen[background].mean() > 0.97, "painting wiped the found background"

    # 3. Two backgrounds, one per line, with a fixed seed.
    panel.get_by_label("Background prompts (one image per line)").fill(
        "a red square on a yellow background\na red square on a green background"
    )
    panel.get_by_label("Seed (-1: random)").fill("5")
    record = generate(studio, panel)

    assert record.task == "inpaint"
    assert record.params["mask_source"] == "editor"
    [given] = stored(studio, record, "input")
    assert np.array_equal(given, photo)
    # The stored mask is the found one plus the stroke, nothing else: every pixel
    # it adds lies under the brush (radius 6 photo pixels: gr.Brush(default_size=6)),
    # and the product pixels along the stroke's middle are all in it.
    [mask] = stored(studio, record, "mask")
    mask = mask > 127
    added, dropped = mask & ~background, background & ~mask
    from_stroke = distance_to_segment(mask.shape, start, end)
    assert not dropped.any(), f"{dropped.sum()} pixels of the found background were lost"
    assert added.any() and (from_stroke[added] <= 6 + 1.5).all(), "the mask changed away from the stroke"
    assert added[product & (from_stroke <= 6 - 1.5)].all(), "the stroke's middle is not in the mask"

    # Two pictures: the asked backgrounds, and every product pixel left unpainted as uploaded.
    outputs = stored(studio, record, "output")
    assert [classify(image).background for image in outputs] == ["yellow", "green"]
    # Bit for bit beyond the matted edge band (issue 20).
    kept = masks.adjust(Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)), -DEFAULT_MATTE_BAND)
    kept = np.asarray(kept) == 255
    assert kept[product].sum() > 100  # the product beyond the stroke and the edge band was left alone
    for image in outputs:
        assert np.array_equal(image[kept], photo[kept]), "a kept pixel changed"
    assert all(np.array_equal(a, b) for a, b in zip(shown_images(page, panel, 2), outputs))
    gallery_lists(page, record)


# -- ControlNet ------------------------------------------------------------------------


def test_controlnet_puts_the_shape_where_the_control_image_has_it(launched, page, tmp_path):
    studio, url = launched
    control, path = draw(tmp_path, "control", Scene("circle", "white", "black", 0.2, 0.3, 0.7))
    panel = open_tab(page, url, "ControlNet")

    upload(page, panel, "Control image (edges, pose or depth are taken from it)", path)
    panel.get_by_role("button", name="Preview the control image").click()
    preview = block(panel, "Control image the ControlNet sees").locator("img")
    expect(preview).to_be_visible(timeout=30_000)
    # The preview is the circle's Canny edges: bright pixels around the bottom left.
    edges = fetched(page, preview).max(axis=-1) > 127
    ys, xs = np.nonzero(edges)
    assert edges.sum() > 40 and xs.mean() < 32 < ys.mean()

    panel.get_by_label("Prompt", exact=True).fill("a red circle on a blue background")
    panel.get_by_label("Seed (-1: random)").fill("1")
    record = generate(studio, panel)

    assert record.task == "controlnet"
    [source] = stored(studio, record, "control_source")
    assert np.array_equal(source, control)
    [edges_used] = stored(studio, record, "control")
    assert np.array_equal(edges_used[..., 0], cv2.Canny(control, 100, 200))
    [shown] = shown_images(page, panel, 1)
    assert np.array_equal(shown, stored(studio, record, "output")[0])
    reading = classify(shown)
    assert (reading.background, reading.colour, reading.shape) == ("blue", "red", "circle")
    x, y = reading.centre
    assert x < 0.5 < y, f"the circle is at {reading.centre}, not in the bottom-left quarter"
    gallery_lists(page, record)


def test_product_shot_shows_its_matte_has_no_outline_and_exports_for_a_marketplace(launched, page, tmp_path):
    """Issue 20: a studio shot on white gets a purple background without a white outline."""
    studio, url = launched
    size = 96
    ss = 4
    shape = Image.new("L", (size * ss, size * ss), 0)
    ImageDraw.Draw(shape).ellipse((30 * ss, 24 * ss, 66 * ss, 72 * ss), fill=255)
    coverage = np.asarray(shape.resize((size, size), Image.Resampling.BOX), np.float32)[..., None] / 255
    photo = np.rint(np.array([246, 246, 244]) * (1 - coverage) + np.array([200, 30, 30]) * coverage).astype(np.uint8)
    path = tmp_path / "bottle.png"
    Image.fromarray(photo).save(path)
    truth = coverage[..., 0] > 0.5
    panel = open_tab(page, url, "Product background")

    # 1. Uploading finds the product and shows its matte: white inside, black outside, grey at the edge.
    upload(page, panel, "Product photo", str(path))
    expect(panel.get_by_text("Product found by")).to_be_visible(timeout=30_000)
    matte_img = block(panel, "Matte (white: product").locator("img")
    expect(matte_img).to_be_visible(timeout=30_000)
    matte = fetched(page, matte_img)[..., 0].astype(int)
    assert matte.shape == truth.shape
    inside = cv2.erode(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    outside = ~cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert (matte[inside] > 235).mean() > 0.99 and (matte[outside] < 20).mean() > 0.99
    assert ((matte > 40) & (matte < 215)).sum() > 20, "no soft edge in the matte"

    # 2. A new background: the ring just outside the product is the new background's colour, not white.
    panel.get_by_label("Background prompts (one image per line)").fill("a red circle on a purple background")
    panel.get_by_label("Seed (-1: random)").fill("3")
    record = generate(studio, panel)
    assert record.params["matting"] is True and record.params["matte_band"] == DEFAULT_MATTE_BAND
    [output] = stored(studio, record, "output")
    outside_distance = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ring = (outside_distance > 0) & (outside_distance <= 2)
    local = np.median(output[(outside_distance > 6) & (outside_distance <= 12)].astype(float), axis=0)
    assert np.median(np.linalg.norm(output[ring].astype(float) - local, axis=1)) < 40, "a halo of the old backdrop"

    # 3. The shot as a marketplace main image: 1000 px, pure white around the product.
    panel.get_by_label("Marketplace preset").click()
    page.get_by_role("option", name="white-square-1000").click()
    panel.get_by_role("button", name="Export the first shot").click()
    link = block(panel, "Marketplace file").locator("a").first
    expect(link).to_be_visible(timeout=30_000)
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    exported = Image.open(io.BytesIO(response.body()))
    assert exported.size == (1000, 1000) and exported.text["atelier"]
    corners = np.asarray(exported.convert("RGB"))[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all()
