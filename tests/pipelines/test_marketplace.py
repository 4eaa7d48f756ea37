"""Marketplace presets (issue 20): exact sizes, the fill share, pure white, a clean cut-out, files with metadata."""

import importlib.util
import io
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from pipelines import marketplace, masks, matting
from pipelines.limits import DEFAULT_MATTE_BAND, RequestError

_here = importlib.util.spec_from_file_location("product_photos", Path(__file__).with_name("conftest.py"))
photos = importlib.util.module_from_spec(_here)
_here.loader.exec_module(photos)

TEXT = {"parameters": "a bottle on marble — ünïcode\nSteps: 20, Seed: 3", "atelier": '{"task": "inpaint", "seed": 3}'}


@pytest.fixture(autouse=True)
def no_rembg_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))


@pytest.fixture(scope="module")
def shot():
    photo, coverage = photos.product_photo(320, photos.STUDIO_BACKDROPS["grey"])
    product, _ = masks.product_mask(photo)
    return photo, matting.matte_of(photo, np.asarray(product) > 127, DEFAULT_MATTE_BAND), coverage


@pytest.mark.parametrize("name", ["white-square-2000", "white-square-1000"])
def test_white_square_is_pure_white_with_the_product_filling_its_share(shot, name):
    photo, matte, _ = shot
    preset = marketplace.PRESETS[name]
    out = marketplace.apply(name, photo, photo, matte)
    assert out.mode == "RGB" and out.size == (preset.size, preset.size)
    pixels = np.asarray(out)
    covered = (pixels != 255).any(axis=2)
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    longer = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    assert abs(longer / preset.size - preset.fill) <= 2 / preset.size
    # Centred, and every pixel outside the product's box exactly #FFFFFF.
    assert abs((rows[0] + rows[-1]) / 2 - preset.size / 2) <= 2 and abs((cols[0] + cols[-1]) / 2 - preset.size / 2) <= 2
    outside = np.ones_like(covered)
    outside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = False
    assert (pixels[outside] == 255).all()
    assert (pixels[: rows[0]] == 255).all() and (pixels[rows[-1] + 1 :] == 255).all()
    # No grey halo of the old backdrop: the product's box edges run straight into white.
    ring = pixels[rows[0] - 1]
    assert (ring == 255).all()


def test_a_cut_out_has_the_matte_as_alpha_and_the_photo_inside(shot):
    photo, matte, coverage = shot
    out = marketplace.apply("cutout", photo, photo, matte)
    assert out.mode == "RGBA" and out.size == photo.size
    rgba = np.asarray(out)
    assert np.array_equal(rgba[..., 3], np.rint(matte.alpha * 255).astype(np.uint8))
    opaque = rgba[..., 3] == 255
    assert np.array_equal(rgba[..., :3][opaque], np.asarray(photo)[opaque])
    assert (rgba[..., 3][coverage == 0] == 0).mean() > 0.99


@pytest.mark.parametrize(("name", "expected"), [("web-1600", (1600, 1200)), ("web-800", (800, 600))])
def test_web_sizes_are_exact_and_never_enlarge(name, expected):
    shot = Image.new("RGB", (2048, 1536), (10, 20, 30))
    assert marketplace.apply(name, shot, shot, None).size == expected
    small = Image.new("RGB", (640, 480))
    assert marketplace.apply(name, small, small, None).size == (640, 480)


def test_files_carry_the_generation_s_metadata(shot):
    photo, matte, _ = shot
    png = Image.open(io.BytesIO(marketplace.encode(photo, "png", TEXT)))
    assert png.format == "PNG" and png.text == TEXT
    for fmt, kind in (("webp", "WEBP"), ("jpeg", "JPEG")):
        opened = Image.open(io.BytesIO(marketplace.encode(photo, fmt, TEXT)))
        assert opened.format == kind and opened.size == photo.size
        comment = opened.getexif().get_ifd(0x8769)[0x9286]
        assert comment[:8] == b"UNICODE\0" and comment[8:].decode("utf-16-be") == TEXT["parameters"]
        description = ElementTree.fromstring(opened.info["xmp"]).find(".//{*}Description")
        namespace = "{https://atelier.invalid/ns/1.0/}"
        assert {key: description.get(namespace + key) for key in TEXT} == TEXT
    cut = marketplace.apply("cutout", photo, photo, matte)
    webp = Image.open(io.BytesIO(marketplace.encode(cut, "webp", TEXT)))
    assert webp.mode == "RGBA" and np.array_equal(np.asarray(webp), np.asarray(cut))  # lossless with alpha
    with pytest.raises(RequestError, match="format jpeg has no transparency; choose png or webp for a cut-out."):
        marketplace.encode(cut, "jpeg", TEXT)
    with pytest.raises(RequestError, match="format must be one of png, webp, jpeg; got 'gif'."):
        marketplace.encode(photo, "gif", TEXT)
    with pytest.raises(RequestError, match="preset must be one of"):
        marketplace.apply("poster", photo, photo, matte)
