"""Parameters carried inside PNG text chunks, so a file dragged out of the gallery still says how it was made.

Two chunks: `parameters` in the AUTOMATIC1111 layout, which most image tools
and model sites already parse, and `atelier`, the exact request as JSON, from
which a rerun can be rebuilt. Both must be deterministic (no timestamps, no
record ids): a rerun that reproduces the pixels must reproduce the file's
sha256 too.

`read_png_metadata` is the one reader of PNG text chunks, ours or another
tool's (webui/imports.py maps those onto a request); it takes any file a
person drops, so it checks the size in the header before decoding.
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


class PngMetadataError(ValueError):
    """A file whose PNG text chunks cannot be read; the message is one sentence saying why."""


class NotPng(PngMetadataError):
    """An image, but not a PNG; `format` is Pillow's name for what it is."""

    def __init__(self, format: str | None) -> None:
        super().__init__(f"Expected a PNG file, got {format}.")
        self.format = format


def read_png_metadata(source: str | Path | bytes | IO[bytes], *, max_pixels: int = MAX_PIXELS) -> dict[str, str]:
    """Every text chunk (tEXt, zTXt, iTXt) of a PNG (a path, its bytes or an open file), by keyword."""
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
        if image.format != "PNG":
            raise NotPng(image.format)
        width, height = image.size
        if width * height > max_pixels:
            raise PngMetadataError(f"The PNG is {width}x{height} pixels; Atelier reads at most {max_pixels:,} pixels.")
        try:
            image.load()  # chunks after the image data are only read with the pixels
            text = getattr(image, "text", {})
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as error:
            raise PngMetadataError(f"The PNG is damaged and could not be read: {error}") from None
        return {str(key): str(value) for key, value in text.items()}
