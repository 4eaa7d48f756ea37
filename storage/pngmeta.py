"""Parameters carried inside PNG text chunks, so a file dragged out of the gallery still says how it was made.

Two chunks: `parameters` in the AUTOMATIC1111 layout, which most image tools
and model sites already parse, and `atelier`, the exact request as JSON, from
which a rerun can be rebuilt. Both must be deterministic (no timestamps, no
record ids): a rerun that reproduces the pixels must reproduce the file's
sha256 too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from PIL import Image
from PIL.PngImagePlugin import PngImageFile

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
        index = seed - int(params.get("seed", seed))
        fields.append(f"Variation seed: {int(params['variation_seed']) + index}")
        fields.append(f"Variation seed strength: {float(params['variation_strength'])}")
    if params.get("refiner"):
        fields.append(f"Refiner: {params['refiner']}")
        fields.append(f"Refiner switch at: {float(params.get('refiner_switch', 0.8))}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def png_text_chunks(params: Mapping[str, Any], *, seed: int) -> dict[str, str]:
    """Text chunks for one output image: `params` is the whole request, `seed` this image's own."""
    atelier = {**params, "image_seed": seed}
    return {
        "parameters": a1111_parameters(params, seed=seed),
        "atelier": json.dumps(atelier, sort_keys=True),
    }


def read_png_metadata(source: str | Path | IO[bytes]) -> dict[str, str]:
    """Every text chunk (tEXt, zTXt, iTXt) of a PNG, by keyword."""
    with Image.open(source) as image:
        if not isinstance(image, PngImageFile):
            raise ValueError(f"Expected a PNG file, got {image.format}.")
        image.load()  # chunks after the image data are only read with the pixels
        return {key: str(value) for key, value in image.text.items()}
