"""Parameters carried inside PNG text chunks, so a file dragged out of the gallery still says how it was made.

Two chunks: `parameters` in the AUTOMATIC1111 layout, which most image tools
and model sites already parse, and `atelier`, the exact request as JSON, from
which a rerun can be rebuilt. Both must be deterministic (no timestamps, no
record ids): a rerun that reproduces the pixels must reproduce the file's
sha256 too.

`read_png_metadata` is the one reader of PNG text chunks, ours or another
tool's (webui/imports/ maps those onto a request); it takes any file a
person drops, so it checks the size in the header before decoding. It reads
JPEG and WebP files too, whose `parameters` text AUTOMATIC1111, Forge and
Fooocus keep in the EXIF UserComment; `exif_copy` writes Atelier's PNGs as
such JPEGs and WebPs (the download and export options), the way A1111's
modules/images.py does (piexif's UserComment "unicode" encoding: an 8-byte
"UNICODE" prefix, then UTF-16 big-endian); `read_user_comment` is the one
decoder of such a comment, whoever wrote it.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import piexif
from PIL import Image

# Far above any generator's output, and below what makes decoding a hazard.
MAX_PIXELS = 64 * 1024 * 1024

_REQUIRED = ("prompt", "num_inference_steps", "sampler", "guidance_scale", "width", "height", "model")


def a1111_parameters(params: Mapping[str, Any], *, seed: int) -> str:
    """The `parameters` text AUTOMATIC1111 writes, for one image made with `seed`."""
    missing = [key for key in _REQUIRED if key not in params]
    if missing:
        raise ValueError(f"params lacks {', '.join(missing)}, which the PNG parameters text needs.")
    lines = [str(params["prompt"])]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = [
        f"Steps: {params['num_inference_steps']}",
        f"Sampler: {params['sampler']}",
        f"CFG scale: {float(params['guidance_scale'])}",
        f"Seed: {seed}",
        f"Size: {params['width']}x{params['height']}",
        f"Model: {params['model']}",
    ]
    # A1111 only writes this for img2img-like runs; same here.
    if params.get("strength") is not None:
        fields.append(f"Denoising strength: {float(params['strength'])}")
    if params.get("variation_seed") is not None and params.get("variation_strength"):
        # Image i of a batch blends variation_seed + i, as its seed is seed + i.
        first = int(params.get("seed", seed))
        index = (seed - first) % _seed_range(first)
        variation = int(params["variation_seed"])
        fields.append(f"Variation seed: {(variation + index) % _seed_range(variation)}")
        fields.append(f"Variation seed strength: {float(params['variation_strength'])}")
    if params.get("refiner"):
        fields.append(f"Refiner: {params['refiner']}")
        fields.append(f"Refiner switch at: {float(params.get('refiner_switch', 0.8))}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _seed_range(seed: int) -> int:
    """Where seed + i wraps: a seed below 2**32 counts on within 32 bits, as before 64-bit seeds
    (the rule of pipelines.limits.seed_plus, which storage may not import)."""
    return 2**32 if seed < 2**32 else 2**64


def png_text_chunks(params: Mapping[str, Any], *, seed: int) -> dict[str, str]:
    """Text chunks for one output image: `params` is the whole request, `seed` this image's own."""
    atelier = {**params, "image_seed": seed}
    return {
        "parameters": a1111_parameters(params, seed=seed),
        "atelier": json.dumps(atelier, sort_keys=True),
    }


# What `exif_copy` writes: Pillow's format name and the file suffix.
EXIF_FORMATS = {"jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
_EXIF_IFD = 0x8769  # the Exif sub-IFD, where UserComment lives
_USER_COMMENT = 0x9286
_UNICODE = b"UNICODE\0"
_PREFIXES = {b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis", b"\0" * 8: "utf-8"}


def user_comment(text: str) -> bytes:
    """EXIF UserComment bytes for `text` as A1111 writes them (piexif.helper.UserComment.dump, "unicode")."""
    return _UNICODE + text.encode("utf-16-be")


def read_user_comment(data: bytes | str) -> str:
    """The text of an EXIF UserComment: its 8-byte prefix names the encoding (EXIF 2.3, table 9), as piexif reads it."""
    if isinstance(data, str):  # Pillow hands back text when a tool wrote the tag with a text type (Fooocus)
        return data.rstrip("\0")
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE:
        # piexif writes big-endian; some tools write little-endian. ASCII text shows which: its zero bytes lead or follow.
        little = len(body) >= 2 and body[0] != 0 and body[1] == 0
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\0")
    if prefix in _PREFIXES:
        return body.decode(_PREFIXES[prefix], errors="replace").rstrip("\0")
    return data.decode("utf-8", errors="replace").strip("\0")


def exif_copy(png: str | Path | bytes, format: str, *, quality: int = 95) -> bytes:
    """A gallery PNG as a JPEG or WebP (`format`: "jpeg" or "webp") carrying its `parameters` text in EXIF.

    Transparency is dropped (RGB), as A1111 does; the same PNG always gives the same bytes.
    """
    if format not in EXIF_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXIF_FORMATS)}; got {format!r}.")
    chunks = read_png_metadata(png)
    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as image:
        pixels = image.convert("RGB")
    # piexif, as A1111 uses: it types UserComment UNDEFINED, as EXIF says; Pillow's own writer makes it BYTE,
    # which piexif (so A1111) reads as a tuple of numbers and cannot decode.
    exif = {"Exif": {piexif.ExifIFD.UserComment: user_comment(chunks["parameters"])}} if "parameters" in chunks else {}
    out = io.BytesIO()
    pixels.save(out, format=EXIF_FORMATS[format][0], quality=quality, exif=piexif.dump(exif) if exif else b"")
    return out.getvalue()


class PngMetadataError(ValueError):
    """A file whose PNG text chunks cannot be read; the message is one sentence saying why."""


class NotPng(PngMetadataError):
    """An image, but not a PNG; `format` is Pillow's name for what it is."""

    def __init__(self, format: str | None) -> None:
        super().__init__(f"Expected a PNG file, got {format}.")
        self.format = format


def read_png_metadata(source: str | Path | bytes | IO[bytes], *, max_pixels: int = MAX_PIXELS) -> dict[str, str]:
    """Every text chunk (tEXt, zTXt, iTXt) of a PNG (a path, its bytes or an open file), by keyword.

    For a JPEG or WebP: its EXIF UserComment as `parameters`, where A1111 keeps it (nothing when absent).
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # max_pixels below is the stricter limit; Pillow's own warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except FileNotFoundError:
        raise PngMetadataError(f"{source} does not exist.") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise PngMetadataError(f"The file is not an image Atelier can read: {error}") from None
    with image:
        if image.format not in ("PNG", "JPEG", "WEBP"):
            raise NotPng(image.format)
        width, height = image.size
        if width * height > max_pixels:
            raise PngMetadataError(
                f"The {image.format} is {width}x{height} pixels; Atelier reads at most {max_pixels:,} pixels."
            )
        if image.format != "PNG":
            return _exif_parameters(image)
        try:
            image.load()  # chunks after the image data are only read with the pixels
            text = getattr(image, "text", {})
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as error:
            raise PngMetadataError(f"The PNG is damaged and could not be read: {error}") from None
        return {str(key): str(value) for key, value in text.items()}


def _exif_parameters(image: Image.Image) -> dict[str, str]:
    """A JPEG's or WebP's EXIF UserComment, read from the header (the pixels are never decoded)."""
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, KeyError, TypeError) as error:
        raise PngMetadataError(f"The {image.format}'s EXIF is damaged and could not be read: {error}") from None
    if not isinstance(comment, (bytes, str)):
        return {}
    text = read_user_comment(comment)
    return {"parameters": text} if text else {}
