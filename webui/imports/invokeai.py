"""InvokeAI's metadata, in both of its eras.

- 3.x to 5.x: the `invokeai_metadata` chunk, a flat JSON object written by
  the CoreMetadataInvocation (invokeai/app/invocations/metadata.py):
  `positive_prompt`, `seed`, `steps`, `cfg_scale`, `scheduler`, `model`,
  `loras`, `controlnets`, `strength` and `init_image` for image to image,
  `refiner_model` and `refiner_start` for SDXL. The `invokeai_graph` /
  `invokeai_workflow` chunks beside it say the same again as a graph; the
  flat object is what InvokeAI itself recalls parameters from, so it is read.
- 2.x: the `sd-metadata` chunk (ldm/invoke/pngwriter.py, built by
  `metadata_dumps` in ldm/invoke/args.py), `{"model_weights", "app_version",
  "image": {"prompt": [{"prompt", "weight"}], "steps", "cfg_scale", "seed",
  "width", "height", "sampler", "type", "strength", "init_image_path" ...}}`,
  and beside it `Dream`, the same as a command line (`"a prompt [negative]"
  -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms`). A negative prompt is the
  bracketed part of the prompt.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

from pipelines.requests import MAX_CONTROLS
from webui.imports import samplers
from webui.imports.common import (
    Builder,
    Catalog,
    ImportedRequest,
    MetadataError,
    as_float,
    as_int,
    controlnet_named,
    empty,
    json_object,
)

# Settings that, at these values, mean what every run of ours does: no CLIP
# skip, no CFG rescale, noise drawn on the CPU, no seamless tiling, no hires.
_PLAIN: dict[str, Callable[[Any], bool]] = {
    "clip_skip": lambda value: as_int(value) == 0,
    "cfg_rescale_multiplier": lambda value: as_float(value) == 0.0,
    "rand_device": lambda value: value == "cpu",
    "seamless_x": lambda value: value is False,
    "seamless_y": lambda value: value is False,
    "hrf_enabled": lambda value: value is False,
}
_MODES = {
    "txt2img": "txt2img",
    "sdxl_txt2img": "txt2img",
    "img2img": "img2img",
    "sdxl_img2img": "img2img",
    "inpaint": "inpaint",
    "sdxl_inpaint": "inpaint",
}


def _model_name(value: Any) -> tuple[Any, dict[str, Any]]:
    """InvokeAI 4+ names a model `{"name", "key", "hash", "base", "type"}`; 3.x `{"model_name", "base_model"}`."""
    if not isinstance(value, dict):
        return value, {}
    rest = dict(value)
    return rest.pop("name", None) or rest.pop("model_name", None), rest


# InvokeAI's number fields (2.x's `image` and 3-5's flat metadata name them alike) and ours.
_NUMBERS = (
    ("seed", "seed", as_int),
    ("steps", "num_inference_steps", as_int),
    ("cfg_scale", "guidance_scale", as_float),
)


def read_invokeai(text: str, catalog: Catalog | None = None) -> ImportedRequest:
    meta = json_object(text, "invokeai")
    built = Builder("invokeai", meta.pop("positive_prompt", None), catalog)
    negative = meta.pop("negative_prompt", None)
    if not empty(negative):
        built.set({"negative_prompt": negative}, negative_prompt=negative)
    built.take(meta, _NUMBERS)
    built.take_size(meta)
    if "scheduler" in meta:
        scheduler = meta.pop("scheduler")
        built.set({"scheduler": scheduler}, sampler=samplers.invokeai(scheduler))
    if "model" in meta:
        name, rest = _model_name(meta.pop("model"))
        if name is not None:
            built.model("model", name)
        built.list({f"model.{key}": value for key, value in rest.items() if not empty(value)})
    # 1. LoRAs: 4+ `{"model": {...}, "weight"}`, 3.x `{"lora": {...}, "weight"}`.
    loras = meta.pop("loras", [])
    for number, item in enumerate(loras if isinstance(loras, list) else [loras]):
        item = item if isinstance(item, dict) else {"?": item}
        name, _ = _model_name(item.get("model", item.get("lora")))
        if not built.lora(f"loras.{number}", name, item.get("weight")):
            built.list({f"loras.{number}": item})
    # 2. The task: image to image and inpainting start from a picture the file names.
    mode = meta.pop("generation_mode", None)
    task = _MODES.get(mode) if isinstance(mode, str) else None
    if task is None and mode is not None:
        built.list({"generation_mode": mode})
    elif task != "txt2img" and task is not None:
        strength = as_float(meta.get("strength"))
        if strength is not None and 0 < strength <= 1:
            meta.pop("strength")
            built.task, built.task_fields["strength"] = task, strength
            init = meta.pop("init_image", None)
            built.refer("image", init if isinstance(init, str) else "the image it started from", "image")
            if task == "inpaint":
                built.refer("mask", "the mask it was painted with", "mask_image")
        else:
            built.list({"generation_mode": mode})
    _controlnets(built, meta.pop("controlnets", []))
    # 3. The SDXL refiner takes over at `refiner_start` of the schedule.
    if not empty(meta.get("refiner_model")):
        name, rest = _model_name(meta.pop("refiner_model"))
        start = meta.pop("refiner_start", None)
        built.model("refiner_model", name, kind="refiner")
        built.set({"refiner_start": start}, refiner_switch=as_float(start))
        built.list({f"refiner_model.{key}": value for key, value in rest.items() if not empty(value)})
    built.list(
        {key: value for key, value in meta.items() if not (empty(value) or (key in _PLAIN and _PLAIN[key](value)))}
    )
    return built.done()


def _controlnets(built: Builder, items: Any) -> None:
    units: list[dict[str, Any]] = []
    for number, item in enumerate(items if isinstance(items, list) else [items]):
        if not isinstance(item, dict) or len(units) == MAX_CONTROLS:
            built.list({f"controlnets.{number}": item})
            continue
        item = dict(item)
        name, _ = _model_name(item.pop("control_model", None))
        image = item.pop("image", None)
        image_name = image.get("image_name") if isinstance(image, dict) else None
        scale, start, end = (
            as_float(item.pop("control_weight", 1.0)),
            as_float(item.pop("begin_step_percent", 0.0)),
            as_float(item.pop("end_step_percent", 1.0)),
        )
        if scale is None or not 0 <= scale <= 2 or start is None or end is None or not 0 <= start < end <= 1:
            built.list({f"controlnets.{number}": {**item, "control_model": name}})
            continue
        # The processed image is the detector's output: no detector here then, the control image as it is.
        processed = item.pop("processed_image", None)
        processed_name = processed.get("image_name") if isinstance(processed, dict) else None
        unit = {"preprocessor": "none", "conditioning_scale": scale, "guidance_start": start, "guidance_end": end}
        index = len(units)
        picked = controlnet_named(name) if isinstance(name, str) else None
        built.refer("controlnet", name, f"controls.{index}.controlnet", picked)
        if picked:
            unit["controlnet"] = picked
        else:
            built.list({f"controlnets.{number}.control_model": name})
        built.refer("control image", processed_name or image_name or "the control image", f"controls.{index}.image")
        built.list({f"controlnets.{number}.{key}": value for key, value in item.items() if not empty(value)})
        units.append(unit)
    if units:
        built.task_fields["controls"] = units
        if built.task == "txt2img":
            built.task_fields.pop("strength", None)
        built.task = "controlnet"


# ---------------------------------------------------------------------------
# InvokeAI 2.x

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_DREAM_SWITCHES = {"-s": "steps", "-S": "seed", "-W": "width", "-H": "height", "-C": "cfg_scale", "-A": "sampler"}


def _prompt_parts(text: str) -> tuple[str, str]:
    """InvokeAI 2's prompt with its `[negative]` parts taken out, and those parts."""
    negative = ", ".join(part.strip() for part in _BRACKETS.findall(text) if part.strip())
    return _BRACKETS.sub("", text).strip(), negative


def read_invokeai2(text: str, catalog: Catalog | None = None) -> ImportedRequest:
    """The `sd-metadata` chunk."""
    meta = json_object(text, "invokeai")
    image = meta.pop("image", None)
    if not isinstance(image, dict):
        raise MetadataError("The file's InvokeAI 2 metadata has no image object.")
    image = dict(image)
    prompts = image.pop("prompt", None)
    if isinstance(prompts, str):
        prompts = [{"prompt": prompts, "weight": 1.0}]
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, dict) for p in prompts)):
        raise MetadataError("The file's InvokeAI 2 metadata has no prompt list.")
    # A blend of weighted prompts has no equal here; the first is used and the rest listed.
    prompt, negative = _prompt_parts(str(prompts[0].get("prompt", "")))
    built = Builder("invokeai", prompt, catalog)
    if as_float(prompts[0].get("weight", 1.0)) != 1.0 or len(prompts) > 1:
        built.list({"image.prompt": prompts})
    if negative:
        built.set({"image.prompt (negative)": negative}, negative_prompt=negative)
    return _invokeai2_settings(built, image, meta)


def read_dream(text: str, catalog: Catalog | None = None) -> ImportedRequest:
    """The `Dream` chunk, where there is no `sd-metadata`."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise MetadataError(f"The file's InvokeAI Dream text cannot be read: {error}.") from None
    if not words:
        raise MetadataError("The file's InvokeAI Dream text is empty.")
    prompt, negative = _prompt_parts(words[0])
    built = Builder("invokeai", prompt, catalog)
    if negative:
        built.set({"Dream (negative)": negative}, negative_prompt=negative)
    image: dict[str, Any] = {}
    rest: list[str] = []
    pairs = iter(words[1:])
    for word in pairs:
        if word in _DREAM_SWITCHES:
            value = next(pairs, "")
            image[_DREAM_SWITCHES[word]] = value if word == "-A" else _number(value)
        else:
            rest.append(word)
    if rest:
        built.list({"Dream": " ".join(rest)})
    return _invokeai2_settings(built, image, {})


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _invokeai2_settings(built: Builder, image: dict[str, Any], meta: dict[str, Any]) -> ImportedRequest:
    built.take(image, _NUMBERS, prefix="image.")
    built.take_size(image, prefix="image.")
    if "sampler" in image:
        sampler = image.pop("sampler")
        built.set({"image.sampler": sampler}, sampler=samplers.invokeai(sampler))
    kind = image.pop("type", "txt2img")
    strength = as_float(image.get("strength"))
    if kind == "img2img" and strength is not None and 0 < strength <= 1:
        image.pop("strength")
        built.task, built.task_fields["strength"] = "img2img", strength
        init = image.pop("init_image_path", None)
        built.refer("image", init if isinstance(init, str) else "the image it started from", "image")
        if not empty(image.get("init_mask")):
            built.task = "inpaint"
            built.refer("mask", str(image.pop("init_mask")), "mask_image")
    elif kind != "txt2img":
        built.list({"image.type": kind})
    if "model_weights" in meta:
        built.model("model_weights", meta.pop("model_weights"))
    plain = {
        "threshold": 0,
        "perlin": 0,
        "seamless": False,
        "hires_fix": False,
        "variations": [],
        "postprocessing": None,
    }
    built.list(
        {f"image.{key}": value for key, value in image.items() if plain.get(key, "?") != value and not empty(value)}
    )
    built.list({key: value for key, value in meta.items() if key != "model" and not empty(value)})
    return built.done()
