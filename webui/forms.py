"""From what a person typed or uploaded to a validated request, for every task.

The tabs, the HTTP API and the CLI all build requests here, so "inpaint
without a mask keeps the product" or "steps default to the model's" means
the same thing everywhere. Uploads pass through ``pipelines.images`` first:
a hostile file is refused with one sentence before anything is written.
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image

from pipelines import masks
from pipelines.images import load_image
from pipelines.requests import (
    MAX_SEED,
    REQUEST_TYPES,
    ControlNetRequest,
    ControlUnit,
    GenerationRequest,
    ImageRef,
    Img2ImgRequest,
    InpaintRequest,
    RequestError,
    Text2ImgRequest,
    random_seed,
)
from webui.models import model_defaults

TASKS = tuple(REQUEST_TYPES)


# Past this a float no longer holds every whole number exactly (a browser's or a JSON client's number).
_EXACT_FLOAT = 2**53


def seed_from(value: Any, *, field: str = "seed") -> int:
    """A seed box's value as a whole number: 0 to 2**64 - 1, or -1 (random, or none for a variation seed).

    The boxes are text, not numbers, because a browser holds numbers as
    doubles and would round a 64-bit seed; text (or an API client's int)
    arrives exactly. A float from an older API client is taken while it is
    exact. Empty means -1.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return -1
        if not re.fullmatch(r"-?[0-9]+", text):
            raise RequestError(f"{field} must be a whole number from 0 to {MAX_SEED}, or -1; got {value!r:.40}.")
        value = int(text)
    elif isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT:
        value = int(value)
    elif value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_SEED:
        raise RequestError(f"{field} must be a whole number from 0 to {MAX_SEED}, or -1; got {value!r:.40}.")
    return value


def default_controlnet(model: str) -> str:
    """The ControlNet a tab starts with: the embedded model's own, or SD 1.5 Canny."""
    return "embedded-canny" if model == "embedded" else "sd15-canny"


def upload(source: Any, *, field: str, required: bool = True) -> Image.Image | None:
    """An uploaded image, normalised, or None when optional and absent."""
    if source is None:
        if required:
            raise RequestError(f"{field} is required for this task; upload an image.")
        return None
    return load_image(source, field=field)


def mask_upload(source: Any, *, field: str = "mask_image") -> Image.Image | None:
    """A mask: any image, read as grey; white is what gets regenerated."""
    image = upload(source, field=field, required=False)
    if image is None:
        return None
    if image.mode == "RGBA":  # painted strokes on a transparent sheet
        image = Image.fromarray(((masks.np.asarray(image)[..., 3] > 0) * 255).astype("uint8"))
    return image.convert("L")


def automatic_mask(image: Image.Image, method: str = "auto") -> tuple[Image.Image, str]:
    """The background to regenerate around the product, and how the product was found."""
    product, used = masks.product_mask(image, method)
    return masks.background_mask(product), used


def build_request(
    task: str,
    *,
    prompt: str,
    model: str,
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    mask_method: str = "auto",
    control_images: tuple[Image.Image, ...] | list[Image.Image] = (),
    controlnet: str | None = None,
    preprocessor: str = "canny",
    preprocessor_params: dict[str, Any] | None = None,
    conditioning_scale: float = 1.0,
    guidance_start: float = 0.0,
    guidance_end: float = 1.0,
    seed: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    sampler: str | None = None,
    **fields: Any,
) -> GenerationRequest:
    """A request for ``task``; settings left as None take the model's defaults.

    ``fields`` are the task's own (strength, resize_mode, mask_grow,
    mask_feather, padding_mask_crop, negative_prompt, batch_size).
    """
    if task not in TASKS:
        raise RequestError(f"task must be one of {', '.join(TASKS)}; got {task!r}.")
    defaults = model_defaults(model)
    chosen = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "sampler": sampler}
    common = {key: defaults[key] if value is None else value for key, value in chosen.items()}
    common.update(prompt=prompt, model=model, seed=random_seed() if seed is None else seed)
    if task == "txt2img":
        size = {"width": width or defaults["width"], "height": height or defaults["height"]}
    else:  # 0 means the input's own size
        size = {"width": width or 0, "height": height or 0}
    fields = {key: value for key, value in fields.items() if value is not None}
    if task == "txt2img":
        return Text2ImgRequest(**common, **size, **fields)
    if task == "img2img":
        if image is None:
            raise RequestError("image is required for image-to-image; upload the picture to start from.")
        return Img2ImgRequest(image=ImageRef.of(image), **common, **size, **fields)
    if task == "inpaint":
        if image is None:
            raise RequestError("image is required for inpainting; upload the product photo.")
        source = "upload"
        if mask is None:
            mask, source = automatic_mask(image, mask_method)
        fields.setdefault("mask_source", source)
        return InpaintRequest(image=ImageRef.of(image), mask_image=ImageRef.of(mask), **common, **size, **fields)
    if not control_images:
        raise RequestError(
            "control_image is required for ControlNet; upload a picture to take the edges, pose or depth from."
        )
    unit = {
        "controlnet": controlnet or default_controlnet(model),
        "preprocessor": preprocessor,
        "preprocessor_params": dict(preprocessor_params or {}),
        "conditioning_scale": conditioning_scale,
        "guidance_start": guidance_start,
        "guidance_end": guidance_end,
    }
    controls = tuple(ControlUnit(image=ImageRef.of(control), **unit) for control in control_images)
    return ControlNetRequest(
        controls=controls,
        image=ImageRef.of(image) if image is not None else None,
        mask_image=ImageRef.of(mask) if mask is not None else None,
        **common,
        **size,
        **fields,
    )
