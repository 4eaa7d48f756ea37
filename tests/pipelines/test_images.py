"""Uploads the way users and attackers send them, each built here from bytes."""

import io
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, PngImagePlugin

from pipelines.images import (
    MAX_ASPECT,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
    RESIZE_MODES,
    load_image,
    output_size,
    resize_to,
)
from pipelines.requests import RequestError, Text2ImgRequest

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
PAYLOAD = b"ATELIER-PAYLOAD-<script>alert(1)</script>"


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def refused(source, field="init_image"):
    """The message ``load_image`` refuses ``source`` with, checked to be one sentence naming the field."""
    with pytest.raises(RequestError) as caught:
        load_image(source, field=field)
    message = str(caught.value)
    assert message.startswith(f"{field} ")
    assert message.endswith(".") and ". " not in message and "\n" not in message
    return message


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_zeros(width, height, *, rows=None):
    """A black 1-bit PNG written by hand; ``rows`` < height leaves the pixel data short.

    Zeros compress about 1000:1, so the header can promise far more pixels
    than the file's size suggests: the shape of a decompression bomb.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def noise(width=64, height=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def bands(colours, *, size=100, vertical=False):
    """Equal bands of solid colour side by side (or stacked when ``vertical``)."""
    blocks = [np.full((size, size, 3), colour, np.uint8) for colour in colours]
    return Image.fromarray(np.concatenate(blocks, axis=0 if vertical else 1))


def close(pixel, expected, tolerance=8):
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected))


# ---------------------------------------------------------------------------
# Sources and the result's shape


def test_every_kind_of_source_gives_the_same_loaded_pixels(tmp_path):
    original = noise()
    data = encode(original)
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    stream = io.BytesIO(data)
    results = [
        load_image(data, field="init_image"),
        load_image(bytearray(data), field="init_image"),
        load_image(str(path), field="init_image"),
        load_image(path, field="init_image"),
        load_image(stream, field="init_image"),
        load_image(Image.open(io.BytesIO(data)), field="init_image"),
    ]
    stream.close()  # the result must not need its source any more
    for image in results:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert np.array_equal(np.asarray(image), np.asarray(original))


def test_a_missing_path_is_the_callers_mistake_not_a_request_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nowhere.png", field="init_image")


# ---------------------------------------------------------------------------
# Refused uploads


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"


@pytest.mark.parametrize(
    "data",
    [
        b"a red circle on a blue background\n",
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        EPS,  # Pillow reads EPS through Ghostscript; uploads must never reach it
        b"",
        zlib.compress(b"\0" * 1000),
    ],
    ids=["text", "pdf", "eps", "empty", "zlib"],
)
def test_a_file_that_is_not_an_image_is_refused_with_the_formats_allowed(data):
    message = refused(data, field="control_image")
    assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_a_truncated_upload_is_refused_as_corrupt(fmt):
    data = encode(noise(), fmt)
    message = refused(data[: len(data) * 6 // 10], field="mask_image")
    assert "truncated or corrupt" in message


def test_garbled_png_data_is_refused_as_corrupt():
    data = bytearray(encode(noise()))
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(b ^ 0x5A for b in data[middle : middle + 200])
    assert "truncated or corrupt" in refused(bytes(data))


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = png_of_zeros(50_000, 50_000, rows=1)
    assert len(bomb) < 1000
    message = refused(bomb)
    assert f"{MAX_PIXELS:,} pixels" in message


def test_the_size_check_does_not_depend_on_pillows_global_guard(monkeypatch):
    # A deployment (or another library) may switch Pillow's guard off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    message = refused(png_of_zeros(50_000, 50_000, rows=1))
    assert "50000x50000" in message


def test_a_complete_image_just_over_the_pixel_limit_is_refused_before_decoding():
    # Valid all the way through, and under Pillow's own limit: only our check stands in the way.
    side = int(MAX_PIXELS**0.5) + 4
    message = refused(png_of_zeros(side, side))
    assert f"{MAX_PIXELS:,} pixels" in message and f"{side}x{side}" in message


def test_the_largest_allowed_upload_loads():
    side = int(MAX_PIXELS**0.5)
    image = load_image(png_of_zeros(side, side), field="init_image")
    assert image.size == (side, side) and image.mode == "RGB"
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_loading_leaves_pillows_global_settings_alone():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    refused(png_of_zeros(50_000, 50_000, rows=1))
    refused(png_of_zeros(5_000, 5_000))
    refused(encode(noise())[:300])
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.parametrize(
    ("width", "height", "words"),
    [
        (100_000, 1, f"from {MIN_SIDE} to {MAX_SIDE} pixels on each side; got 100000x1."),
        (1, 100_000, f"from {MIN_SIDE} to {MAX_SIDE} pixels on each side; got 1x100000."),
        (MAX_SIDE + 8, 64, f"from {MIN_SIDE} to {MAX_SIDE} pixels on each side; got {MAX_SIDE + 8}x64."),
        (4, 4, f"from {MIN_SIDE} to {MAX_SIDE} pixels on each side; got 4x4."),
        (8, 8 * MAX_ASPECT + 8, f"long side at most {MAX_ASPECT} times its short side; got 8x{8 * MAX_ASPECT + 8}."),
        (8 * MAX_ASPECT + 8, 8, f"long side at most {MAX_ASPECT} times its short side; got {8 * MAX_ASPECT + 8}x8."),
    ],
)
def test_sides_out_of_range_are_refused_with_the_size_got(width, height, words):
    assert refused(png_of_zeros(width, height)).endswith(words)


@pytest.mark.parametrize(
    "size", [(MIN_SIDE, MIN_SIDE), (MIN_SIDE * MAX_ASPECT, MIN_SIDE), (MAX_SIDE, MAX_SIDE // MAX_ASPECT)]
)
def test_sizes_at_the_limits_load(size):
    assert load_image(png_of_zeros(*size), field="init_image").size == size


def test_a_pil_image_in_memory_meets_the_same_limits():
    message = refused(Image.new("RGB", (2, 64)), field="mask_image")
    assert "got 2x64" in message


# ---------------------------------------------------------------------------
# Normalised uploads


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
    ids=["gif", "apng", "webp"],
)
def test_an_animation_gives_its_first_frame(fmt, options):
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 3  # the file really is animated
    image = load_image(data, field="init_image")
    assert image.mode == "RGB" and image.size == (32, 32)
    assert image.getpixel((16, 16)) == RED


def test_an_animation_already_opened_at_a_later_frame_gives_its_first():
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, GREEN, BLUE)]
    opened = Image.open(io.BytesIO(encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    opened.seek(2)
    assert load_image(opened, field="init_image").getpixel((16, 16)) == RED


def test_a_cmyk_jpeg_becomes_rgb_of_the_same_colour():
    colour = (200, 30, 60)
    data = encode(Image.new("RGB", (32, 32), colour).convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    image = load_image(data, field="init_image")
    assert image.mode == "RGB"
    assert close(image.getpixel((16, 16)), colour)


SIXTEEN_BIT = np.array([[0, 32768, 65535, 257 * 100]], dtype=np.uint16).repeat(8, axis=0).repeat(2, axis=1)
EIGHT_BIT = [0, 128, 255, 100]


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.fromarray(SIXTEEN_BIT), "PNG"),
        lambda: encode(Image.fromarray(SIXTEEN_BIT), "TIFF"),
        lambda: Image.fromarray(SIXTEEN_BIT.astype(">u2")),
        lambda: Image.fromarray(SIXTEEN_BIT.astype(np.int32)),
    ],
    ids=["png-I;16", "tiff-I;16", "I;16B", "I"],
)
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_not_clipped(make):
    source = make()
    if isinstance(source, Image.Image):
        assert source.mode in ("I;16B", "I")
    image = load_image(source, field="init_image")
    assert image.mode == "RGB"
    row = [image.getpixel((x, 4)) for x in range(0, 8, 2)]
    assert row == [(v, v, v) for v in EIGHT_BIT]


def test_float_greyscale_is_read_from_zero_to_one():
    pixels = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan, 0.25, 0.75]], dtype=np.float32).repeat(8, axis=0)
    image = load_image(Image.fromarray(pixels), field="init_image")
    assert [image.getpixel((x, 0))[0] for x in range(8)] == [0, 128, 255, 255, 0, 0, 64, 191]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_becomes_rgb(mode):
    grey = Image.new("L", (16, 16), 0)
    grey.paste(255, (0, 0, 8, 16))
    image = load_image(encode(grey.convert(mode)), field="control_image")
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == (255, 255, 255) and image.getpixel((12, 2)) == (0, 0, 0)


def test_exif_orientation_is_applied_so_the_picture_is_upright():
    # Stored 80x40 with red in the top-left quarter; orientation 6 tells a
    # viewer to turn it 90 degrees clockwise, which puts red at the top right.
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(encode(stored, "JPEG", quality=95, exif=exif), field="init_image")
    assert image.size == (40, 80)
    assert close(image.getpixel((30, 10)), RED, 30)
    assert close(image.getpixel((10, 10)), BLUE, 30)
    assert close(image.getpixel((30, 60)), BLUE, 30)
    assert image.info == {} and len(image.getexif()) == 0


def quadrants():
    """64x64: red, green / blue, white; a picture JPEG keeps recognisable."""
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    for colour, box in [(RED, (0, 0, 32, 32)), (GREEN, (32, 0, 64, 32)), (BLUE, (0, 32, 32, 64))]:
        image.paste(colour, box)
    return image


def test_a_photo_with_damaged_exif_still_loads():
    # Phones and editors write broken EXIF often enough; the pixels are fine.
    data = encode(quadrants(), "JPEG", quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow says "Corrupt EXIF data"
        image = load_image(data, field="init_image")
    assert image.size == (64, 64) and close(image.getpixel((16, 16)), RED)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(quadrants()) + PAYLOAD,
        lambda: encode(quadrants()) + zip_with(PAYLOAD),
        lambda: encode(quadrants(), "JPEG", quality=95) + zip_with(PAYLOAD),
        lambda: encode(quadrants(), "PNG", pnginfo=png_text(PAYLOAD.decode())),
        lambda: encode(quadrants(), "JPEG", quality=95, comment=PAYLOAD),
    ],
    ids=["png+html", "png+zip", "jpeg+zip", "png-text-chunk", "jpeg-comment"],
)
def test_a_polyglot_or_tagged_upload_keeps_only_its_pixels(make):
    data = make()
    assert PAYLOAD in data
    image = load_image(data, field="init_image")
    assert image.size == (64, 64) and image.info == {}
    for point, colour in [((16, 16), RED), ((48, 16), GREEN), ((16, 48), BLUE), ((48, 48), (255, 255, 255))]:
        assert close(image.getpixel(point), colour)
    again = encode(image)  # what callers store
    assert b"ATELIER-PAYLOAD" not in again and b"PK\x03\x04" not in again


def zip_with(content):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("payload.html", content)
    return buffer.getvalue()


def png_text(text):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def test_transparency_is_kept_when_real():
    pixels = np.zeros((16, 16, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[..., 3] = 255
    pixels[:8, :, 3] = 0
    image = load_image(encode(Image.fromarray(pixels)), field="mask_image")
    assert image.mode == "RGBA"
    assert image.getpixel((4, 2))[3] == 0 and image.getpixel((4, 12)) == (255, 0, 0, 255)


def test_an_opaque_rgba_upload_becomes_rgb():
    image = load_image(encode(Image.new("RGBA", (16, 16), (*GREEN, 255))), field="init_image")
    assert image.mode == "RGB" and image.getpixel((8, 8)) == GREEN


def test_a_palette_with_a_used_transparent_index_becomes_rgba():
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([*RED, *GREEN] + [0] * 762)
    palette.paste(1, (0, 0, 8, 16))
    image = load_image(encode(palette, transparency=1), field="init_image")
    assert image.mode == "RGBA"
    assert image.getpixel((2, 2))[3] == 0 and image.getpixel((12, 2)) == (*RED, 255)


def test_a_palette_whose_transparent_index_is_unused_becomes_rgb():
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([*RED, *GREEN] + [0] * 762)
    image = load_image(encode(palette, transparency=1), field="init_image")
    assert image.mode == "RGB" and image.getpixel((2, 2)) == RED


def test_greyscale_with_alpha_becomes_rgba():
    grey = Image.new("LA", (16, 16), (200, 255))
    grey.paste((200, 0), (0, 0, 8, 16))
    image = load_image(encode(grey), field="mask_image")
    assert image.mode == "RGBA"
    assert image.getpixel((2, 2))[3] == 0 and image.getpixel((12, 2)) == (200, 200, 200, 255)


# ---------------------------------------------------------------------------
# resize_to


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("size", [(512, 512), (768, 512), (512, 768), (64, 2048)])
@pytest.mark.parametrize("colour_mode", ["RGB", "RGBA", "L"])
def test_every_mode_gives_exactly_the_size_asked_in_the_same_colour_mode(mode, size, colour_mode):
    image = noise(300, 200).convert(colour_mode)
    resized = resize_to(image, *size, mode)
    assert resized.size == size and resized.mode == colour_mode


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_the_same_size_gives_the_very_same_pixels(mode):
    image = noise(96, 64).convert("RGBA")
    resized = resize_to(image, 96, 64, mode)
    assert resized is not image
    assert np.array_equal(np.asarray(resized), np.asarray(image))


def test_fit_stretches_the_whole_picture():
    resized = resize_to(bands([RED, BLUE]), 100, 100, "fit")
    assert close(resized.getpixel((10, 50)), RED) and close(resized.getpixel((90, 50)), BLUE)


@pytest.mark.parametrize("vertical", [False, True], ids=["wide", "tall"])
def test_crop_keeps_the_centre_and_drops_the_side_bands(vertical):
    image = bands([RED, GREEN, BLUE], size=200, vertical=vertical)
    pixels = np.asarray(resize_to(image, 100, 100, "crop")).astype(int)
    assert close(pixels[50, 50], GREEN)
    edges = [pixels[:, 0], pixels[:, -1]] if not vertical else [pixels[0], pixels[-1]]
    for edge in edges:  # only a sliver of resampling blur may reach in from the cut bands
        assert close(edge.mean(axis=0), GREEN, 20)


def test_crop_keeps_the_aspect_of_what_it_keeps():
    # A red square in the middle of a 2:1 image must come out square, not squashed.
    image = Image.new("RGB", (400, 200), BLUE)
    image.paste(RED, (150, 50, 250, 150))
    pixels = np.asarray(resize_to(image, 200, 200, "crop"))
    red = np.argwhere((pixels[..., 0] > 128) & (pixels[..., 2] < 128))
    height, width = red.max(axis=0) - red.min(axis=0) + 1
    assert abs(height - width) <= 2 and abs(height - 100) <= 2


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_pad_keeps_the_whole_picture_centred_and_repeats_its_edges(mode):
    image = bands([RED, BLUE]).convert(mode)  # 200x100
    padded = np.asarray(resize_to(image, 100, 101, "pad"))
    inner = np.asarray(image.resize((100, 50), Image.Resampling.LANCZOS))
    top, bottom = 25, 26  # the odd pixel goes to the bottom
    assert np.array_equal(padded[top : top + 50], inner)
    assert (padded[:top] == inner[0]).all() and (padded[-bottom:] == inner[-1]).all()


def test_pad_of_a_tall_image_fills_left_and_right():
    image = bands([RED, BLUE], vertical=True)  # 100x200
    padded = np.asarray(resize_to(image, 100, 100, "pad"))
    assert np.array_equal(padded[:, 25:75], np.asarray(image.resize((50, 100), Image.Resampling.LANCZOS)))
    assert close(padded[10, 0], RED) and close(padded[90, 99], BLUE)


def test_resizing_keeps_transparency():
    image = Image.new("RGBA", (200, 100), (*RED, 0))
    for mode in RESIZE_MODES:
        assert resize_to(image, 64, 64, mode).getextrema()[3] == (0, 0)


def test_an_unknown_resize_mode_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(RequestError) as caught:
        resize_to(noise(), 64, 64, "stretch")
    message = str(caught.value)
    assert message == "resize_mode must be one of fit, crop, pad; got 'stretch'."


# ---------------------------------------------------------------------------
# output_size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 768), (512, 768)),
        ((1000, 750), (1000, 752)),
        ((1001, 1003), (1000, 1000)),
        ((100, 100), (104, 104)),  # a tie rounds up
        ((4096, 2048), (2048, 1024)),
        ((3000, 2000), (2048, 1368)),
        ((2000, 3000), (1368, 2048)),
        ((32, 32), (64, 64)),
        ((8192, 512), (2048, 128)),
        ((8, 128), (64, 128)),
    ],
)
def test_output_size_follows_the_image_within_what_a_request_allows(size, expected):
    assert output_size(Image.new("RGB", size)) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(MIN_SIDE, MAX_SIDE), st.integers(MIN_SIDE, MAX_SIDE))
def test_output_size_is_always_a_valid_request_size_near_the_images_aspect(width, height):
    width, height = max(width, height // MAX_ASPECT), max(height, width // MAX_ASPECT)
    out_width, out_height = output_size(Image.new("1", (width, height)))
    Text2ImgRequest(prompt="x", width=out_width, height=out_height)  # raises if not allowed
    if min(out_width, out_height) > 64:  # unclamped sides: the aspect holds to within rounding
        assert abs(out_width / out_height - width / height) <= (width / height) * 8 / min(out_width, out_height)


def test_output_size_refuses_bounds_that_are_not_multiples():
    with pytest.raises(ValueError):
        output_size(Image.new("RGB", (100, 100)), low=60)
