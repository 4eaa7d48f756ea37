"""AUTOMATIC1111's infotext: the `parameters` PNG chunk, or a JPEG/WebP's EXIF UserComment (Forge writes the same).

The text is the prompt, an optional `Negative prompt:` line, and a last line
of `Key: value` pairs (modules/infotext_utils.py `parse_generation_parameters`
upstream; written by modules/processing.py `create_infotext`). LoRAs are
`<lora:name:weight>` tags in the prompt, which A1111 strips before encoding
(modules/extra_networks.py `parse_prompt`); here they become the request's
LoRAs where the LoRA folder has that name. "Denoising strength" without a
hires fix means the image was made from another image (img2img); with "Mask
blur" as well, from a masked one (inpaint).
"""

from __future__ import annotations

import json
import re

from webui.imports import samplers
from webui.imports.common import Builder, Catalog, ImportedRequest, float_text, int_text, loadable_model

# One `Key: value` pair of the settings line, as upstream's `re_param`, except
# that a key starts at a word boundary and is at most 64 characters, matched
# possessively: a hostile line cannot make the search quadratic.
_PAIR = re.compile(r'\b(\w[\w \-/]{0,63}+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_NEGATIVE = "Negative prompt:"
# modules/extra_networks.py `re_extra_net`, for the `lora` network only, bounded.
_LORA_TAG = re.compile(r"<lora:([^:<>]{1,256}):([^:<>]{1,32})(?::[^<>]{0,64})?>")
_HIRES = ("Hires upscale", "Hires resize-1", "Hires steps", "Hires upscaler")


def split(text: str) -> tuple[str, str, dict[str, str]]:
    """The prompt, the negative prompt and the settings of an infotext."""
    lines = text.strip().replace("\r\n", "\n").split("\n")
    settings: dict[str, str] = {}
    pairs = _PAIR.findall(lines[-1])
    if len(pairs) >= 3:  # upstream's test for a settings line
        lines.pop()
        for key, value in pairs:
            value = value.strip()
            if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
                try:
                    value = str(json.loads(value))
                except ValueError:
                    pass
            settings[key.rstrip()] = value
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if not negative and line.startswith(_NEGATIVE):
            negative.append(line[len(_NEGATIVE) :])
        else:
            (negative or prompt).append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), settings


def parse_a1111(text: str) -> dict[str, str]:
    """A `parameters` text as A1111's png-info answers it: "Prompt", "Negative prompt", then each setting as written."""
    prompt, negative, settings = split(text)
    return {"Prompt": prompt, "Negative prompt": negative, **settings}


def read_a1111(text: str, catalog: Catalog | None = None, *, source: str = "automatic1111") -> ImportedRequest:
    prompt, negative, settings = split(text)
    tags = _LORA_TAG.findall(prompt)
    if tags:
        prompt = _LORA_TAG.sub("", prompt).strip()
    built = Builder(source, prompt, catalog)
    for name, weight in tags:
        if not built.lora(f"<lora:{name}>", name, float_text(weight)):
            built.list({f"<lora:{name}>": weight})
    if negative:
        built.set({"Negative prompt": negative}, negative_prompt=negative)
    built.take(
        settings,
        (
            ("Steps", "num_inference_steps", int_text),
            ("CFG scale", "guidance_scale", float_text),
            ("Seed", "seed", int_text),
        ),
    )
    if "Size" in settings:
        size = settings.pop("Size")
        match = _SIZE.fullmatch(size)
        built.set({"Size": size}, width=match and int(match[1]), height=match and int(match[2]))
    if "Sampler" in settings:
        found = {"Sampler": settings.pop("Sampler"), "Schedule type": settings.pop("Schedule type", None)}
        built.set(found, sampler=samplers.a1111(found["Sampler"], found["Schedule type"]))
    if "Model" in settings:
        built.model("Model", settings.pop("Model"))
    if "Variation seed" in settings:
        found = {
            "Variation seed": settings.pop("Variation seed"),
            "Variation seed strength": settings.pop("Variation seed strength", None),
        }
        strength = found["Variation seed strength"]
        built.set(
            found,
            variation_seed=int_text(found["Variation seed"]),
            variation_strength=float_text(strength) if strength is not None else None,
        )
    if "Refiner" in settings:
        found = {"Refiner": settings.pop("Refiner"), "Refiner switch at": settings.pop("Refiner switch at", "0.8")}
        if loadable_model(found["Refiner"]):  # A1111 writes a checkpoint's title; only a source we can load maps
            built.set(found, refiner=found["Refiner"], refiner_switch=float_text(found["Refiner switch at"]))
        else:
            built.list(found)
            built.refer("refiner", found["Refiner"], "refiner")
    if "Denoising strength" in settings and not any(key in settings for key in _HIRES):
        # img2img writes its strength; txt2img writes one only for its hires fix.
        raw = settings.pop("Denoising strength")
        strength = float_text(raw)
        if strength is not None and 0 < strength <= 1:
            built.task = "inpaint" if "Mask blur" in settings else "img2img"
            built.task_fields["strength"] = strength
            built.refer("image", "the image it started from", "image")
            if built.task == "inpaint":
                built.refer("mask", "the mask it was painted with", "mask_image")
        else:
            built.list({"Denoising strength": raw})
    built.list(settings)
    return built.done()
