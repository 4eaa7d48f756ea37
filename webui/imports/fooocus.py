"""Fooocus's own metadata scheme: a JSON object in `parameters` (PNG) or the EXIF UserComment (JPEG, WebP).

Written by modules/meta_parser.py `FooocusMetadataParser.to_string` from the
list `save_and_log` builds in modules/async_worker.py: `prompt`,
`negative_prompt`, `steps`, `resolution` as `"(width, height)"`,
`guidance_scale`, `sampler` and `scheduler` in ComfyUI's names, `seed` as
text, `base_model` and `refiner_model` as file stems, `refiner_switch`,
`loras` as `[stem, weight, hash]`, and Fooocus's own (`styles`,
`performance`, `sharpness`, `adm_guidance`, the prompt expansion). Fooocus
encodes the prompt with its styles and expansion applied (`full_prompt`);
the prompt as typed is used here and those are listed. With its `a1111`
scheme Fooocus writes A1111's infotext instead, read by webui/imports/a1111.py.
"""

from __future__ import annotations

import re
from typing import Any

from webui.imports import samplers
from webui.imports.common import Builder, Catalog, ImportedRequest, as_float, as_int, empty, int_text, json_object

_RESOLUTION = re.compile(r"\(\s*([0-9]{1,5})\s*,\s*([0-9]{1,5})\s*\)")
# Fooocus's own settings at what every run here does.
_PLAIN = {"vae": "Default (model)", "refiner_model": "None", "prompt_expansion": "", "metadata_scheme": "fooocus"}
# Written alongside what is read, derived from it: no news for the user.
_DERIVED = ("lora_combined_", "base_model_hash", "refiner_model_hash")


def read_fooocus(text: str, catalog: Catalog | None = None) -> ImportedRequest:
    meta = json_object(text, "fooocus")
    built = Builder("fooocus", meta.pop("prompt", None), catalog)
    negative = meta.pop("negative_prompt", None)
    if not empty(negative):
        built.set({"negative_prompt": negative}, negative_prompt=negative)
    if "seed" in meta:
        raw = meta.pop("seed")
        built.set({"seed": raw}, seed=int_text(raw) if isinstance(raw, str) else as_int(raw))
    if "steps" in meta:
        raw = meta.pop("steps")
        built.set({"steps": raw}, num_inference_steps=as_int(raw))
    if "guidance_scale" in meta:
        raw = meta.pop("guidance_scale")
        built.set({"guidance_scale": raw}, guidance_scale=as_float(raw))
    if "resolution" in meta:
        raw = meta.pop("resolution")
        match = _RESOLUTION.fullmatch(raw) if isinstance(raw, str) else None
        built.set({"resolution": raw}, width=match and int(match[1]), height=match and int(match[2]))
    if "sampler" in meta or "scheduler" in meta:
        name, scheduler = meta.pop("sampler", None), meta.pop("scheduler", None)
        built.set({"sampler": name, "scheduler": scheduler}, sampler=samplers.comfyui(name, scheduler))
    if "base_model" in meta:
        built.model("base_model", meta.pop("base_model"))
    refiner = meta.pop("refiner_model", "None")
    switch = meta.pop("refiner_switch", None)
    if refiner not in ("None", "", None):
        built.model("refiner_model", refiner, kind="refiner")
        if built.request.refiner is not None:
            built.set({"refiner_switch": switch}, refiner_switch=as_float(switch))
        else:
            built.list({"refiner_switch": switch})
    loras = meta.pop("loras", [])
    for number, item in enumerate(loras if isinstance(loras, list) else [loras]):
        name, weight = (item[0], item[1]) if isinstance(item, list) and len(item) >= 2 else (None, None)
        if not built.lora(f"loras.{number}", name, weight):
            built.list({f"loras.{number}": item})
    built.list({key: value for key, value in meta.items() if not _plain(key, value)})
    return built.done()


def _plain(key: str, value: Any) -> bool:
    return empty(value) or _PLAIN.get(key) == value or key.startswith(_DERIVED)
