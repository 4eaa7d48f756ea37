import importlib
import importlib.machinery
import importlib.util

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.masks import (
    ALPHA_THRESHOLD,
    MASK_METHODS,
    OVERLAY_TINT,
    adjust,
    background_mask,
    invert,
    mask_from_editor,
    mask_to_image,
    overlay,
    paste_back,
    product_mask,
    rembg_model_path,
)
from pipelines.requests import RequestError


@pytest.fixture(autouse=True)
def no_rembg_weights(tmp_path, monkeypatch):
    """An empty model folder, so "auto" behaves the same on every machine."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))


def bottle_photo(width=256, height=320, seed=0):
    """A studio shot: a dark bottle with an orange label and a light logo.

    The backdrop is a light gradient with sensor noise; the logo is the
    backdrop's colour, the hard case for a colour-model segmenter. Edges are
    anti-aliased (drawn at 4x, box-filtered). Returns the photo and the true
    shape (pixels more than half covered by the bottle).
    """
    ss = 4
    sx, sy = width / 256, height / 320
    shape = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(shape)

    def box(left, top, right, bottom, radius):
        draw.rounded_rectangle(
            (left * sx * ss, top * sy * ss, right * sx * ss, bottom * sy * ss), radius=radius * sx * ss, fill=255
        )

    box(78, 110, 178, 290, 24)  # body
    box(112, 50, 144, 130, 8)  # neck
    box(108, 38, 148, 60, 4)  # cap
    coverage = np.asarray(shape.resize((width, height), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height)[:, None, None]
    xs = np.linspace(0, 1, width)[None, :, None]
    backdrop = np.array([236, 232, 226]) - 40 * ys - 10 * xs + rng.normal(0, 3, (height, width, 3))
    glass = np.array([28, 64, 44]) + 40 * np.sin(np.pi * xs) + rng.normal(0, 2, (height, width, 3))
    photo = backdrop * (1 - coverage) + glass * coverage
    row, col = lambda v: round(v * sy), lambda v: round(v * sx)
    photo[row(170) : row(230), col(82) : col(174)] = [214, 118, 40]  # label
    photo[row(188) : row(212), col(104) : col(152)] = [238, 234, 228]  # logo
    return Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), coverage[..., 0] > 0.5


def white(mask):
    return np.asarray(mask) > 127


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def disk_mask(size=200, radius=40):
    yy, xx = np.mgrid[:size, :size]
    return Image.fromarray(np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2, 255, 0).astype(np.uint8))


def distance_to_product(background):
    return cv2.distanceTransform(white(background).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


# --- product_mask ---------------------------------------------------------------


def test_a_transparent_png_is_cut_by_its_own_alpha():
    alpha = np.zeros((64, 80), np.uint8)
    alpha[10:50, 20:60] = 255
    alpha[10:50, 19] = 200  # soft edge: kept
    alpha[10:50, 18] = 60  # faint fringe: repainted
    rgba = np.dstack([np.full((64, 80, 3), 90, np.uint8), alpha])
    image = Image.fromarray(rgba, mode="RGBA")

    for method in ("auto", "alpha"):
        mask, used = product_mask(image, method)
        assert used == "alpha"
        assert mask.mode == "L" and mask.size == image.size
        assert np.array_equal(np.asarray(mask), np.where(alpha > ALPHA_THRESHOLD, 255, 0))


def test_alpha_on_an_opaque_photo_says_what_to_choose_instead():
    photo, _ = bottle_photo()
    with pytest.raises(RequestError, match="mask_method 'alpha' .*transparent.*'grabcut'"):
        product_mask(photo, "alpha")
    # An alpha channel that hides nothing is not a cut-out either.
    _, used = product_mask(photo.convert("RGBA"), "auto")
    assert used == "grabcut"


@pytest.mark.parametrize("seed", [0, 1])
def test_grabcut_finds_a_bottle_on_a_gradient_backdrop(seed):
    photo, truth = bottle_photo(seed=seed)
    mask, used = product_mask(photo)  # auto, with no rembg weights on disk
    assert used == "grabcut"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert iou(white(mask), truth) >= 0.9
    # The light logo looks like the backdrop but sits inside the bottle.
    assert white(mask)[200, 128]


def test_grabcut_on_a_large_photo_matches_the_shape_at_full_size():
    photo, truth = bottle_photo(width=768, height=960)
    mask, _ = product_mask(photo, "grabcut")
    assert mask.size == photo.size
    assert iou(white(mask), truth) >= 0.9


def test_grabcut_is_deterministic():
    photo, _ = bottle_photo(seed=3)
    first, _ = product_mask(photo, "grabcut")
    second, _ = product_mask(photo, "grabcut")
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_unknown_method_lists_the_allowed_names():
    photo, _ = bottle_photo()
    with pytest.raises(RequestError) as caught:
        product_mask(photo, "magic")
    assert str(caught.value) == f"mask_method must be one of {', '.join(MASK_METHODS)}; got 'magic'."


def _packages(monkeypatch, *, installed: bool) -> None:
    """Make rembg and onnxruntime look installed or absent, whatever this machine has."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in ("rembg", "onnxruntime"):
            return importlib.machinery.ModuleSpec(name, None) if installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_rembg_when_not_installed_says_what_to_install(monkeypatch):
    _packages(monkeypatch, installed=False)
    photo, _ = bottle_photo()
    with pytest.raises(RequestError, match=r"mask_method 'rembg' needs the rembg package.*pip install rembg"):
        product_mask(photo, "rembg")


def test_rembg_without_weights_names_the_missing_file_and_downloads_nothing(tmp_path, monkeypatch):
    _packages(monkeypatch, installed=True)
    photo, _ = bottle_photo()
    with pytest.raises(RequestError, match="mask_method 'rembg' needs the model file .*u2net.onnx"):
        product_mask(photo, "rembg")
    assert not (tmp_path / "u2net").exists()


def test_rembg_weights_are_looked_for_where_rembg_keeps_them(tmp_path, monkeypatch):
    assert rembg_model_path() == tmp_path / "u2net" / "u2net.onnx"
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert rembg_model_path() == tmp_path / ".u2net" / "u2net.onnx"


# --- adjust, invert, background_mask --------------------------------------------


@pytest.mark.parametrize("grow", [3, 8, -3, -8])
def test_grow_and_shrink_move_the_boundary_by_that_many_pixels(grow):
    radius = 40
    before = white(disk_mask(radius=radius))
    after = white(adjust(disk_mask(radius=radius), grow))
    expected = np.pi * (radius + grow) ** 2
    assert abs(after.sum() - expected) / expected < 0.03
    assert (after >= before).all() if grow > 0 else (after <= before).all()


def test_grow_zero_changes_nothing_and_the_image_edge_is_not_a_boundary():
    edge = np.zeros((50, 50), np.uint8)
    edge[:, :20] = 255
    mask = Image.fromarray(edge)
    assert np.array_equal(np.asarray(adjust(mask, 0)), edge)
    shrunk = white(adjust(mask, -5))
    assert shrunk[:, :15].all() and not shrunk[:, 15:].any()


def test_invert_twice_is_identity():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8), mode="L")
    assert np.array_equal(np.asarray(invert(invert(noise))), np.asarray(noise))
    product = disk_mask()
    assert not (white(product) & white(invert(product))).any()


def test_mask_grow_eats_into_the_product_and_negative_keeps_a_margin():
    product = disk_mask(radius=40)
    plain = white(background_mask(product))
    assert np.array_equal(plain, ~white(product))
    grown = white(background_mask(product, grow=4))
    shrunk = white(background_mask(product, grow=-4))
    assert (grown >= plain).all() and grown.sum() > plain.sum()
    assert (shrunk <= plain).all() and shrunk.sum() < plain.sum()
    assert grown[100, 100 - 38] and not plain[100, 100 - 38]  # 2 px inside the product edge
    assert plain[100, 100 - 42] and not shrunk[100, 100 - 42]  # 2 px outside it


# --- paste_back -------------------------------------------------------------------


@pytest.mark.parametrize("feather", [0, 1, 4, 16])
def test_product_pixels_come_back_bit_for_bit(feather):
    photo, _ = bottle_photo()
    product, _ = product_mask(photo)
    background = background_mask(product, grow=2)
    rng = np.random.default_rng(feather)
    generated = Image.fromarray(rng.integers(0, 256, (320, 256, 3), dtype=np.uint8))

    out = paste_back(photo, generated, background, feather=feather)

    assert out.mode == "RGB" and out.size == photo.size
    kept = ~white(background)
    assert np.array_equal(np.asarray(out)[kept], np.asarray(photo)[kept])
    far = distance_to_product(background) > feather
    assert np.array_equal(np.asarray(out)[far], np.asarray(generated)[far])


@pytest.mark.parametrize("feather", [1, 5, 12])
def test_the_seam_ramp_lies_inside_the_background_only(feather):
    original = Image.new("RGB", (120, 100), (200, 200, 200))
    ImageDraw.Draw(original).ellipse((30, 20, 90, 80), fill=(20, 40, 160))
    product = Image.new("L", original.size, 0)
    ImageDraw.Draw(product).ellipse((30, 20, 90, 80), fill=255)
    background = background_mask(product)
    generated = Image.new("RGB", original.size, (0, 0, 0))

    out = np.asarray(paste_back(original, generated, background, feather=feather)).astype(int)

    distance = distance_to_product(background)
    kept, ramp, beyond = distance == 0, (distance > 0) & (distance <= feather), distance > feather
    assert np.array_equal(out[kept], np.asarray(original)[kept])
    assert ((out[ramp] > 0) & (out[ramp] < 200)).all()  # a blend of the old backdrop and the new
    assert (out[beyond] == 0).all()
    # Brighter (more of the old backdrop) next to the seam than further out.
    assert out[50, 29, 0] > out[50, 29 - feather + 1, 0] or feather == 1


def test_a_generated_image_of_another_size_is_fitted_to_the_original():
    photo, _ = bottle_photo(width=250, height=333)
    product, _ = product_mask(photo)
    background = background_mask(product)
    generated = Image.new("RGB", (256, 336), (10, 200, 30))

    out = paste_back(photo, generated, background, feather=3)

    assert out.size == (250, 333)
    kept = ~white(background)
    assert np.array_equal(np.asarray(out)[kept], np.asarray(photo)[kept])
    assert tuple(np.asarray(out)[5, 5]) == (10, 200, 30)


def test_an_rgba_original_keeps_its_rgb_and_has_no_dark_fringe():
    rgba = np.zeros((64, 64, 4), np.uint8)  # transparent pixels are black underneath
    rgba[16:48, 16:48] = [180, 90, 30, 255]
    rgba[16:48, 47] = [180, 90, 30, 200]  # a soft edge, kept: its RGB, not composited
    rgba[16:48, 48] = [180, 90, 30, 100]  # a fainter one, repainted
    original = Image.fromarray(rgba, mode="RGBA")
    product, used = product_mask(original)
    assert used == "alpha"
    generated = Image.new("RGB", (64, 64), (250, 250, 250))

    out = np.asarray(paste_back(original, generated, background_mask(product), feather=6))

    kept = white(product)
    assert np.array_equal(out[kept], rgba[..., :3][kept])
    beside = out[30, 49:55]  # inside the feather, next to the product
    assert (beside.astype(int) >= 180).all()


def test_bad_feather_is_a_user_error():
    image = Image.new("RGB", (16, 16))
    with pytest.raises(RequestError, match="feather must be a whole number of pixels, 0 or more; got -2."):
        paste_back(image, image, Image.new("L", (16, 16)), feather=-2)


# --- the editor and previews ------------------------------------------------------


def stroke_layer(size=(40, 30)):
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    layer[10:13, 5:30] = [255, 0, 0, 255]
    layer[20, 20] = [0, 0, 0, 40]  # a faint, dark dab still counts
    return layer


def test_a_painted_stroke_becomes_the_mask():
    layer = stroke_layer()
    expected = layer[..., 3] > 0
    for as_value in (lambda a: a, Image.fromarray):
        mask = mask_from_editor({"background": None, "layers": [as_value(layer)], "composite": None}, (40, 30))
        assert mask.mode == "L" and mask.size == (40, 30)
        assert np.array_equal(white(mask), expected)


def test_strokes_in_several_layers_add_up_and_no_strokes_is_none():
    first, second = np.zeros((30, 40, 4), np.uint8), np.zeros((30, 40, 4), np.uint8)
    first[0:5, 0:5, 3] = 255
    second[25:30, 35:40, 3] = 255
    mask = mask_from_editor({"background": None, "layers": [first, second], "composite": None}, (40, 30))
    assert white(mask).sum() == 50
    assert mask_from_editor(None, (40, 30)) is None
    assert mask_from_editor({"background": None, "layers": [], "composite": None}, (40, 30)) is None
    blank = {"background": None, "layers": [np.zeros((30, 40, 4), np.uint8)], "composite": None}
    assert mask_from_editor(blank, (40, 30)) is None


@pytest.mark.parametrize(("kind", "image_mode"), [("numpy", "RGBA"), ("pil", "RGBA"), ("numpy", "RGB")])
def test_what_gradio_image_editor_hands_a_handler(tmp_path, kind, image_mode):
    gr = pytest.importorskip("gradio")
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    Image.new("RGB", (40, 30), "gray").save(tmp_path / "background.png")
    Image.fromarray(stroke_layer()).save(tmp_path / "layer.png")
    editor = gr.ImageEditor(type=kind, image_mode=image_mode)
    value = editor.preprocess(
        EditorData(
            background=FileData(path=str(tmp_path / "background.png")),
            layers=[FileData(path=str(tmp_path / "layer.png"))],
            composite=FileData(path=str(tmp_path / "background.png")),
        )
    )
    mask = mask_from_editor(value, (40, 30))
    stroke = np.zeros((30, 40), bool)
    stroke[10:13, 5:30] = True
    # Without alpha ("RGB") the faint black dab is indistinguishable from no paint.
    if image_mode == "RGBA":
        stroke[20, 20] = True
    assert np.array_equal(white(mask), stroke)


def test_overlay_tints_only_what_will_be_repainted():
    photo, _ = bottle_photo()
    product, _ = product_mask(photo)
    background = background_mask(product)
    preview = np.asarray(overlay(photo, background)).astype(int)
    original = np.asarray(photo).astype(int)
    kept = ~white(background)
    assert np.array_equal(preview[kept], original[kept])
    tinted = preview[~kept]
    expected = np.rint(original[~kept] * 0.5 + np.array(OVERLAY_TINT) * 0.5)
    assert np.array_equal(tinted, expected)
    shown = np.asarray(mask_to_image(background))
    assert shown.shape == (320, 256, 3) and np.array_equal(shown[..., 0] > 127, white(background))
