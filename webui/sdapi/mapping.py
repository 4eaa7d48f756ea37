"""An AUTOMATIC1111 request body -> Atelier's own requests, one per batch (`n_iter`), and what could not be honoured.

Everything a client can get wrong is found here, before anything is queued
or written: images go through the same door as the tabs' uploads
(`pipelines.images.load_image`), every request is validated on
construction, LoRAs, the model and ControlNets are looked up. What A1111
does and Atelier cannot (face restoration, hires fix, tiling, other
extensions...) is not refused: it is named, with the reason, in
`Plan.not_supported`, which the response's `info` carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.images import resize_to
from pipelines.limits import MAX_BATCH, MAX_SEED, RequestError
from pipelines.requests import (
    ControlNetRequest,
    GenerationRequest,
    ImageRef,
    Img2ImgRequest,
    InpaintRequest,
    Text2ImgRequest,
    random_seed,
)
from pipelines.samplers import SAMPLER_NAMES
from webui.forms import mask_upload
from webui.models import ModelEntry, find, model_defaults
from webui.sdapi import controlnet
from webui.sdapi.schemas import GenerationBody, Img2ImgBody, Txt2ImgBody
from webui.sdapi.uploads import decode_bytes, decode_image

# A1111's field for each of Atelier's, so an error names what the client sent.
A1111_NAMES = {
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "variation_seed": "subseed",
    "variation_strength": "subseed_strength",
    "strength": "denoising_strength",
    "mask_feather": "mask_blur",
    "padding_mask_crop": "inpaint_full_res_padding",
    "sampler": "sampler_name",
    "mask_image": "mask",
    "image": "init_images[0]",
    "refiner_switch": "refiner_switch_at",
    "refiner": "refiner_checkpoint",
    "loras": "prompt",
}

# The schedule each A1111 sampler takes under "Automatic" (modules/sd_samplers_kdiffusion.py,
# `samplers_k_diffusion` options); the others use the model's own.
_AUTOMATIC_SCHEDULE = {
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2S a": "karras",
    "DPM2": "karras",
    "DPM2 a": "karras",
    "Restart": "karras",
    "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 3M SDE": "exponential",
}
# A1111 v1.9+ schedulers (modules/sd_schedulers.py) by name; "uniform" is the model's own timesteps.
SCHEDULERS = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}

_LORA = re.compile(r"<lora:([^:>]+)((?::[^:>]*)*)>", re.IGNORECASE)
_HASH = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")


def a1111_message(message: str) -> str:
    """An Atelier validation message with the field named as the A1111 client named it."""
    first, _, rest = message.partition(" ")
    return f"{A1111_NAMES[first]} {rest}" if first in A1111_NAMES else message


def atelier_sampler(name: str | None, scheduler: str | None, *, default: str) -> str:
    """Atelier's sampler for an A1111 sampler and schedule, or a RequestError naming the one it lacks.

    Any sampler in pipelines/samplers.py is found by its A1111 name, and its
    Karras (or other schedule) variant by "<name> <Schedule>", so samplers
    added there are offered here without a change.
    """
    if not name:
        return default
    schedule = (scheduler or "automatic").strip().lower()
    schedule = next((key for key, label in SCHEDULERS.items() if schedule in (key, label.lower())), schedule)
    if name in SAMPLER_NAMES and schedule in ("automatic", "uniform"):
        wanted = _AUTOMATIC_SCHEDULE.get(name) if schedule == "automatic" else None
        # A1111's own default schedule for it, when Atelier has that variant; else the model's schedule.
        return f"{name} {SCHEDULERS[wanted]}" if wanted and f"{name} {SCHEDULERS[wanted]}" in SAMPLER_NAMES else name
    if schedule in SCHEDULERS and f"{name} {SCHEDULERS[schedule]}" in SAMPLER_NAMES:
        return f"{name} {SCHEDULERS[schedule]}"
    if name in SAMPLER_NAMES and schedule in SCHEDULERS and name.lower().endswith(schedule):
        return name  # "DPM++ 2M Karras" with scheduler "karras": said twice, the same thing
    if name not in SAMPLER_NAMES and not any(n.startswith(f"{name} ") for n in SAMPLER_NAMES):
        raise RequestError(f"sampler_name must be one of {', '.join(SAMPLER_NAMES)}; got {name!r}.")
    raise RequestError(
        f"scheduler {scheduler!r} is not available with {name}; use automatic"
        + (" or karras" if f"{name} Karras" in SAMPLER_NAMES else "")
        + "."
    )


def find_model(models: list[ModelEntry], title: str, field_name: str) -> ModelEntry:
    """A model list entry by the title a client sends: its name or source, with or without A1111's " [hash]"."""
    if not isinstance(title, str) or not title.strip():
        raise RequestError(f"{field_name} must name a model from GET /sdapi/v1/sd-models.")
    plain = _HASH.sub("", title.strip())
    for candidate in (plain, re.sub(r"\.(safetensors|ckpt)$", "", plain)):
        entry = find(models, candidate)
        if entry is not None:
            return entry
    names = ", ".join(entry.name for entry in models)
    raise RequestError(f"{field_name} must be one of {names}; got {title!r}.")


def prompt_loras(prompt: str, *, apply: bool) -> tuple[str, list[tuple[str, float]], dict[str, str]]:
    """The prompt without `<lora:name:weight>` tags, the LoRAs they name, and notes on what was not used.

    A1111's tag may carry a second weight (text encoder, then UNet); Atelier
    has one weight per LoRA, so the first is used and the second listed.
    """
    loras: list[tuple[str, float]] = []
    notes: dict[str, str] = {}
    for match in _LORA.finditer(prompt):
        name, weights = match[1].strip(), [w for w in match[2].split(":")[1:]]
        try:
            weight = float(weights[0]) if weights and weights[0].strip() else 1.0
        except ValueError:
            raise RequestError(f"prompt: the weight in {match[0]!r} must be a number.") from None
        if len(weights) > 1:
            notes[f"prompt {match[0]}"] = "Atelier gives a LoRA one weight; the first was used for all its layers."
        loras.append((name, weight))
    cleaned = prompt
    if loras:  # the commas and spaces that stood around a tag go with it; other prompts stay as written
        cleaned = re.sub(r"(?:\s*,)+", ",", _LORA.sub(" ", prompt))
        cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip().strip(",").strip()
    if not apply and loras:
        notes["disable_extra_networks"] = "the <lora:...> tags were removed from the prompt and not applied."
        loras = []
    return cleaned, loras, notes


@dataclass
class Context:
    """What a mapping needs of the studio: the model list, the client's current model, the defaults."""

    models: list[ModelEntry]
    current_model: str  # a source


@dataclass
class Plan:
    requests: list[GenerationRequest]
    model: ModelEntry | None
    not_supported: dict[str, str] = field(default_factory=dict)


def txt2img(body: Txt2ImgBody, context: Context) -> Plan:
    notes = _unsupported(body)
    if body.enable_hr:
        notes["enable_hr"] = "hires fix is not in Atelier; ask for the final size directly."
    if body.firstpass_image:
        notes["firstpass_image"] = "only used by hires fix, which Atelier does not have."
    fields, model = _common(body, context, notes)
    units, resize_mode = controlnet.units(body.alwayson_scripts, model=fields["model"], init_image=None, notes=notes)
    if units:
        size = {"width": fields.pop("width"), "height": fields.pop("height")}
        # The extension's default is "Crop and Resize".
        first = _build(ControlNetRequest, controls=tuple(units), resize_mode=resize_mode or "crop", **size, **fields)
    else:
        first = _build(Text2ImgRequest, **fields)
    return Plan(_batches(first, body.n_iter), model, notes)


def img2img(body: Img2ImgBody, context: Context) -> Plan:
    notes = _unsupported(body)
    if not body.init_images:
        raise RequestError("init_images must hold one base64 image to start from.")
    if len(body.init_images) > 1:
        notes["init_images"] = f"only the first of the {len(body.init_images)} images was used."
    image = decode_image(body.init_images[0], "init_images[0]")
    mask = _mask(body, image, notes)
    fields, model = _common(body, context, notes, size_default=0)
    resize_mode = {0: "fit", 1: "crop", 2: "pad", 3: "fit"}.get(body.resize_mode)
    if resize_mode is None:
        raise RequestError(f"resize_mode must be 0, 1, 2 or 3; got {body.resize_mode!r}.")
    if body.resize_mode == 3:
        notes["resize_mode"] = "3 (latent upscale) is done as 0 (just resize): Atelier resizes pixels."
    if body.denoising_strength is not None:
        fields["strength"] = body.denoising_strength
    if fields.pop("variation_strength", 0) > 0:
        notes["subseed_strength"] = "variation seeds apply to text-to-image only in Atelier."
    fields.pop("variation_seed", None)
    if body.initial_noise_multiplier not in (None, 1, 1.0):
        notes["initial_noise_multiplier"] = "Atelier's image-to-image adds the scheduler's own noise."
    if body.latent_mask:
        notes["latent_mask"] = "Atelier inpaints with the one mask."
    units, unit_resize = controlnet.units(body.alwayson_scripts, model=fields["model"], init_image=image, notes=notes)
    if units:
        if unit_resize not in (None, resize_mode):
            notes["alwayson_scripts.controlnet resize_mode"] = "the control images are resized as init_images are."
        if mask is not None:
            _mask_notes(body, notes, reason="ControlNet inpainting uses the mask as it is")
        ref = ImageRef.of(image)
        first = _build(
            ControlNetRequest,
            controls=tuple(units),
            image=ref,
            mask_image=ImageRef.of(mask) if mask is not None else None,
            resize_mode=resize_mode,
            **fields,
        )
        return Plan(_batches(first, body.n_iter), model, notes)
    if mask is None:
        first = _build(Img2ImgRequest, image=ImageRef.of(image), resize_mode=resize_mode, **fields)
        return Plan(_batches(first, body.n_iter), model, notes)
    # Inpainting keeps every pixel outside the mask at the photo's own size: A1111 first brings the
    # image to width x height, so the same is done here, and the result is that size.
    width, height = fields.pop("width"), fields.pop("height")
    if width and height:
        image, mask = resize_to(image, width, height, resize_mode), resize_to(mask, width, height, resize_mode)
    inpaint = {"mask_feather": _mask_blur(body, notes)}
    if body.inpaint_full_res and body.inpaint_full_res_padding > 0:
        inpaint["padding_mask_crop"] = body.inpaint_full_res_padding
    elif body.inpaint_full_res and "inpaint_full_res" in body.model_fields_set:
        notes["inpaint_full_res"] = "with inpaint_full_res_padding 0 the whole image is inpainted; give a padding."
    if body.inpainting_fill != 1:
        notes["inpainting_fill"] = "Atelier's inpainting starts from the original pixels (A1111's 1, original)."
    first = _build(
        InpaintRequest,
        image=ImageRef.of(image),
        mask_image=ImageRef.of(mask),
        mask_source="upload",
        **inpaint,
        **fields,
    )
    return Plan(_batches(first, body.n_iter), model, notes)


# -- shared pieces ------------------------------------------------------------------------


def _common(
    body: GenerationBody, context: Context, notes: dict[str, str], *, size_default: int | None = None
) -> tuple[dict[str, Any], ModelEntry | None]:
    """The fields every task shares, as Atelier names them; defaults from the model."""
    overrides = dict(body.override_settings or {})
    title = overrides.pop("sd_model_checkpoint", None)
    if title is not None:
        model = find_model(context.models, title, "override_settings.sd_model_checkpoint")
        source = model.source
    else:
        source = context.current_model
        model = find(context.models, source)
    for key in overrides:
        notes[f"override_settings.{key}"] = "Atelier has no such setting; only sd_model_checkpoint applies."
    defaults = model.defaults() if model is not None else model_defaults(source)
    prompt, loras, lora_notes = prompt_loras(body.prompt, apply=not body.disable_extra_networks)
    notes.update(lora_notes)
    fields: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": body.negative_prompt,
        "model": source,
        "seed": _seed(body.seed, "seed"),
        "batch_size": body.batch_size,
        "num_inference_steps": body.steps if body.steps is not None else defaults["num_inference_steps"],
        "guidance_scale": body.cfg_scale if body.cfg_scale is not None else defaults["guidance_scale"],
        "sampler": atelier_sampler(
            body.sampler_name or body.sampler_index, body.scheduler, default=defaults["sampler"]
        ),
        "loras": tuple(loras),
    }
    for side in ("width", "height"):
        value = getattr(body, side)
        if value is None:
            value = defaults[side] if size_default is None else size_default
        elif value > 0:
            value -= value % 8  # A1111's latents are a side // 8: the image is that, times 8
        fields[side] = value
    if body.subseed_strength:
        fields["variation_seed"] = _seed(body.subseed, "subseed")
        fields["variation_strength"] = body.subseed_strength
    if body.refiner_checkpoint not in (None, "", "None"):
        refiner = find_model(context.models, body.refiner_checkpoint, "refiner_checkpoint")
        fields["refiner"] = refiner.source
        if body.refiner_switch_at is not None:
            fields["refiner_switch"] = body.refiner_switch_at
    return fields, model


def _seed(value: int, name: str) -> int:
    if value == -1:
        return random_seed()
    if not 0 <= value <= MAX_SEED:
        raise RequestError(f"{name} must be -1 (random) or a whole number from 0 to {MAX_SEED}; got {value!r}.")
    return value


def _build(kind: type[GenerationRequest], **fields: Any) -> GenerationRequest:
    try:
        return kind(**fields)
    except RequestError as error:
        raise RequestError(a1111_message(str(error))) from None


def _batches(first: GenerationRequest, n_iter: int) -> list[GenerationRequest]:
    """n_iter requests whose seeds continue one another, as the Text-to-image tab's batch count does."""
    if not 1 <= n_iter <= MAX_BATCH:
        raise RequestError(f"n_iter must be a whole number from 1 to {MAX_BATCH}; got {n_iter!r}.")
    batches = [first]
    for number in range(1, n_iter):
        shift = number * first.batch_size
        changes: dict[str, Any] = {"seed": (first.seed + shift) % (MAX_SEED + 1)}
        if first.variation_seed is not None:
            changes["variation_seed"] = (first.variation_seed + shift) % (MAX_SEED + 1)
        batches.append(first.replace(**changes))
    return batches


def _mask(body: Img2ImgBody, image: Image.Image, notes: dict[str, str]) -> Image.Image | None:
    if not body.mask:
        return None
    mask = mask_upload(decode_bytes(body.mask, "mask"), field="mask")
    if body.inpainting_mask_invert not in (0, 1):
        raise RequestError(f"inpainting_mask_invert must be 0 or 1; got {body.inpainting_mask_invert!r}.")
    if body.inpainting_mask_invert:
        mask = Image.eval(mask, lambda value: 255 - value)
    if mask.size != image.size:  # A1111 resizes the mask with the image; here, to the image first
        mask = mask.resize(image.size, Image.Resampling.LANCZOS)
    return mask


def _mask_blur(body: Img2ImgBody, notes: dict[str, str]) -> int:
    if body.mask_blur is not None:
        return body.mask_blur
    if body.mask_blur_x != body.mask_blur_y:
        notes["mask_blur_x"] = "Atelier feathers the same in both directions; the larger blur was used."
    return max(body.mask_blur_x, body.mask_blur_y)


def _mask_notes(body: Img2ImgBody, notes: dict[str, str], *, reason: str) -> None:
    if body.mask_blur or body.mask_blur_x or body.mask_blur_y:
        notes["mask_blur"] = f"{reason}."
    if body.inpaint_full_res and body.inpaint_full_res_padding:
        notes["inpaint_full_res"] = f"{reason}."


def _unsupported(body: GenerationBody) -> dict[str, str]:
    """A1111 features Atelier does not have, each named when the client asked for it."""
    notes: dict[str, str] = {}
    if body.restore_faces:
        notes["restore_faces"] = "face restoration is not part of Atelier."
    if body.tiling:
        notes["tiling"] = "seamless tiling is not part of Atelier."
    if body.styles:
        notes["styles"] = "Atelier has no saved prompt styles; write them into the prompt."
    if body.seed_resize_from_w > 0 or body.seed_resize_from_h > 0:
        notes["seed_resize_from_w"] = "Atelier draws each seed's noise at the size generated."
    for name, plain in (("s_churn", 0), ("s_tmin", 0), ("s_tmax", 0), ("s_noise", 1), ("s_min_uncond", 0)):
        value = getattr(body, name)
        if value is not None and value != plain and not (name == "s_tmax" and value == float("inf")):
            notes[name] = "Atelier's samplers take no sigma-churn settings."
    # eta only moves ancestral samplers and DDIM, in A1111 as here; those run at their usual eta.
    sampler = body.sampler_name or body.sampler_index or ""
    own = 1.0 if sampler.endswith(" a") else 0.0 if sampler.startswith("DDIM") else None
    if body.eta is not None and own is not None and body.eta != own:
        notes["eta"] = f"{sampler} runs at eta {own:g} in Atelier."
    if body.script_name:
        notes["script_name"] = f"A1111 scripts ({body.script_name}) do not run in Atelier."
    for name, script in (body.alwayson_scripts or {}).items():
        args = script.get("args") if isinstance(script, dict) else None
        if str(name).lower() != "controlnet" and args not in (None, [], [False]):
            notes[f"alwayson_scripts.{name}"] = "only ControlNet runs in Atelier."
    if body.infotext:
        notes["infotext"] = "send the fields themselves; Atelier does not read them from infotext."
    return notes
