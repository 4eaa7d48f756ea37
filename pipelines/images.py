"""Uploaded images, made safe and uniform for the image-to-image tabs.

Image-to-image, inpainting and ControlNet all start from a picture a user
uploads. ``load_image`` turns whatever arrives (bytes, a path, a file, a PIL
image) into a fully decoded "RGB" or "RGBA" image, or refuses it with one
sentence naming the field; ``resize_to`` brings an init image to the size being
generated; ``output_size`` picks that size from the image when the user did not.

Uploads are hostile until decoded: the size in the header is checked before a
single pixel is decompressed, only formats Atelier needs are opened (Pillow
would otherwise hand EPS to Ghostscript), and the result is a fresh image with
no metadata, so nothing appended to or embedded in the upload travels on.

Like ``pipelines.requests`` this module imports neither torch nor diffusers:
the UI checks an upload before anything heavy is loaded.
"""

from __future__ import annotations

import io
import os
import struct
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.limits import MAX_SIZE, MIN_SIZE, RequestError

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | IO[bytes] | Image.Image

# Pillow format names, and how a message names them. Everything else is
# refused before decoding: fewer parsers facing the internet.
ACCEPTED_FORMATS = {
    "PNG": "PNG",
    "JPEG": "JPEG",  # Pillow also opens phones' MPO files (a JPEG plus previews) through this
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}

MIN_SIDE, MAX_SIDE = 8, 8192
MAX_PIXELS = 4096 * 4096  # 16.7 Mpx: a 4096x4096 upload, 64 MiB once decoded to RGBA
MAX_ASPECT = 16  # long side over short side

# Pillow errors from decoders meeting data that stops early or lies about itself.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

RESIZE_MODES = ("fit", "crop", "pad")


def load_image(source: ImageSource, *, field: str) -> Image.Image:
    """The upload as a fully decoded, upright "RGB" or "RGBA" image with empty ``info``.

    RGBA only when some pixel is actually transparent. Animated files give
    their first frame (a PIL image passed in is rewound to it). Raises
    ``RequestError`` naming ``field`` for anything that is not a readable
    image within the size limits.
    """
    if isinstance(source, Image.Image):
        return _normalise(source, field)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    with _open(source, field) as image:
        return _normalise(image, field)


def _open(source: str | os.PathLike | IO[bytes], field: str) -> Image.Image:
    """Read the header only; pixels are decoded later, once the size is known to be safe."""
    try:
        return Image.open(source, formats=list(ACCEPTED_FORMATS))
    except UnidentifiedImageError:
        raise RequestError(f"{field} must be a {_format_names()} image; the uploaded file is not one.") from None
    except Image.DecompressionBombError:
        # Pillow's own guard, far above MAX_PIXELS, fired while reading the header.
        raise RequestError(_too_many_pixels(field, "")) from None
    except FileNotFoundError:
        raise  # a caller's path, not the user's upload
    except _DECODE_ERRORS:
        # Some decoders (WebP) start in the header and fail there on a cut file.
        raise RequestError(_corrupt(field)) from None


def _normalise(image: Image.Image, field: str) -> Image.Image:
    # 1. Size, from the header: nothing has been decompressed yet.
    _check_size(image.size, field)
    # 2. Pixels of the first frame.
    if getattr(image, "is_animated", False):
        image.seek(0)
    try:
        image.load()
    except _DECODE_ERRORS:
        raise RequestError(_corrupt(field)) from None
    # 3. Upright, as a photo viewer shows it.
    image = ImageOps.exif_transpose(image)
    # 4. Eight-bit RGB, or RGBA when transparency is real.
    image = _to_rgb_or_rgba(image)
    # 5. A fresh image: no EXIF, text chunks, ICC profile or trailing bytes.
    return Image.frombytes(image.mode, image.size, image.tobytes())


def _check_size(size: tuple[int, int], field: str) -> None:
    width, height = size
    got = f"{width}x{height}"
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise RequestError(f"{field} must be from {MIN_SIDE} to {MAX_SIDE} pixels on each side; got {got}.")
    if width * height > MAX_PIXELS:
        raise RequestError(_too_many_pixels(field, f"; got {got}"))
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise RequestError(f"{field} must have its long side at most {MAX_ASPECT} times its short side; got {got}.")


def _corrupt(field: str) -> str:
    return f"{field} is truncated or corrupt, so it could not be decoded; upload the whole file again."


def _too_many_pixels(field: str, got: str) -> str:
    side = int(MAX_PIXELS**0.5)
    return f"{field} must have at most {MAX_PIXELS:,} pixels ({side}x{side}){got}."


def _format_names() -> str:
    names = list(dict.fromkeys(ACCEPTED_FORMATS.values()))
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Eight bits per channel, three or four channels, whatever the file held."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        opaque = image.getchannel("A").getextrema()[0] == 255
        return image.convert("RGB") if opaque else image
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale, scaled (not clipped) to 8 bits.

    Pillow's own ``convert("L")`` clips at 255, turning a 16-bit photo white.
    "I;16*" and "I" are read as 0-65535 (Pillow opened 16-bit PNGs as "I" for
    years); "F" as 0.0-1.0, the range image editors write float TIFFs in.
    """
    pixels = np.asarray(image)
    if image.mode == "F":
        scaled = np.rint(np.clip(np.nan_to_num(pixels), 0.0, 1.0) * 255)
    else:
        # Integer rounding: 65535 -> 255, 32768 -> 128.
        scaled = (np.clip(pixels.astype(np.int64), 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(scaled.astype(np.uint8))


def resize_to(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """``image`` at exactly ``width`` x ``height``, the way ``mode`` says.

    "fit" stretches the whole picture (AUTOMATIC1111's "Just resize"); "crop"
    keeps the aspect, covers the frame and cuts the overhang equally from both
    sides; "pad" keeps the aspect and the whole picture, centred, and fills the
    margins by repeating the edge pixels, which diffusion blends in better than
    a flat colour. Lanczos throughout; the mode (RGB, RGBA, L) is kept.
    """
    if mode not in RESIZE_MODES:
        raise RequestError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}.")
    if image.size == (width, height):
        return image.copy()
    if mode == "fit":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "crop":
        return _cover_and_crop(image, width, height)
    return _fit_and_pad(image, width, height)


def _cover_and_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    # One resample from a fractional source box: no rounding of an intermediate size.
    scale = max(width / image.width, height / image.height)
    box_width, box_height = width / scale, height / scale
    left, top = (image.width - box_width) / 2, (image.height - box_height) / 2
    box = (left, top, left + box_width, top + box_height)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def _fit_and_pad(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / image.width, height / image.height)
    inner = (
        min(width, max(1, round(image.width * scale))),
        min(height, max(1, round(image.height * scale))),
    )
    pixels = np.asarray(image.resize(inner, Image.Resampling.LANCZOS))
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    margins = [(top, height - inner[1] - top), (left, width - inner[0] - left)]
    margins += [(0, 0)] * (pixels.ndim - 2)  # the channel axis, if any
    return Image.fromarray(np.pad(pixels, margins, mode="edge"))


def output_size(image: Image.Image, *, multiple: int = 8, low: int = MIN_SIZE, high: int = MAX_SIZE) -> tuple[int, int]:
    """The (width, height) to generate for ``image``: its own size, as near as a request allows.

    Both sides become multiples of ``multiple`` (the VAE downsamples by 8).
    A side over ``high`` scales the image down proportionally, so the aspect
    holds; a side under ``low`` is raised to it, which changes the aspect but
    only for slivers ``load_image`` already bounds. The defaults are the width
    and height limits of ``pipelines.limits``.
    """
    if low % multiple or high % multiple or not 0 < low <= high:
        raise ValueError(f"low and high must be multiples of {multiple} with 0 < low <= high; got {low} and {high}.")
    scale = min(1.0, high / max(image.size))

    def side(length: int) -> int:
        nearest = int(length * scale / multiple + 0.5) * multiple
        return min(high, max(low, nearest))

    return side(image.width), side(image.height)
