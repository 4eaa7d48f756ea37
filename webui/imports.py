"""Read a PNG's generation metadata back into one of our requests.

Four sources, tried in this order, each claimed by its own text chunk:

- Atelier's own `atelier` chunk (storage/pngmeta.py): the exact request as
  JSON, read with `request_from_dict`.
- InvokeAI's `invokeai_metadata` chunk: a flat JSON object (`positive_prompt`,
  `seed`, `steps`, `cfg_scale`, `scheduler`, `width`, `height`, `model` ...).
- ComfyUI's `prompt` chunk: the executed graph in API form, `{node id:
  {"class_type", "inputs"}}`, where an input is a value or a link `[node id,
  output index]`. The request is read from the KSampler (or
  KSamplerAdvanced) node and what its links reach: CLIPTextEncode for the
  prompts, EmptyLatentImage for the size, CheckpointLoaderSimple for the
  model.
- AUTOMATIC1111's `parameters` chunk: the prompt, an optional `Negative
  prompt:` line, and a last line of `Key: value` pairs
  (modules/infotext_utils.py `parse_generation_parameters` upstream).

A field we cannot use keeps our default, and what was found for it goes into
`unmapped` as written, with everything else found but not mapped (Clip skip,
hires fix, LoRA nodes, a sampler we do not have). Nothing is guessed: a
sampler maps only where it is the same algorithm and noise schedule, and a
model name from another tool maps only where it names a model this machine
can load without a download ("embedded", a diffusers folder, a .safetensors
or .ckpt file, or a hub id already in the local Hugging Face cache).

Why not the `sd-parsers` library (PyPI, 0.6, MIT): we evaluated it and it
does not fit. Its ComfyUI parser needs the `workflow` chunk as well as
`prompt` (a PNG carrying only the API graph parses as nothing); its InvokeAI
parser reads the model from `model_name` (InvokeAI 3), so InvokeAI 4's
`{"name": ...}` model is dropped silently, and a wrong-typed field there
escapes as AttributeError or TypeError; its AUTOMATIC1111 parser splits the
settings line on every comma and colon, so quoted values (`Lora hashes: "a:
1, b: 2"`) come out garbled; and its parser manager returns None for every
failure, where we must say what was wrong. It maps no sampler names to
diffusers', which is most of the work here, so the parsers below are our own.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipelines.requests import MAX_SEED, GenerationRequest, RequestError, Text2ImgRequest, request_from_dict
from storage.pngmeta import NotPng, PngMetadataError, read_png_metadata

# Generous for every tool's real chunks (a large ComfyUI graph is tens of KB);
# Pillow bounds compressed chunks at 1 MiB but plain tEXt not at all.
MAX_CHUNK_CHARS = 1_000_000
_MAX_SHOWN = 1_000  # characters of one unmapped value
_MAX_HOPS = 32  # links followed from a sampler node before giving up

SOURCES = ("atelier", "invokeai", "comfyui", "automatic1111")
_LABELS = {"atelier": "Atelier", "invokeai": "InvokeAI", "comfyui": "ComfyUI", "automatic1111": "AUTOMATIC1111"}


class MetadataError(ValueError):
    """A PNG whose metadata cannot become a request; the message is one sentence saying why."""


@dataclass(frozen=True)
class ImportedRequest:
    source: str  # one of SOURCES
    request: GenerationRequest  # validated; fields not found keep their defaults
    unmapped: dict[str, str] = field(default_factory=dict)  # found but not used, as written in the file

    def to_json(self) -> str:
        """The request's own fields, plus `source` and `unmapped`."""
        return json.dumps({"source": self.source, **self.request.to_dict(), "unmapped": self.unmapped})


def import_png(source: str | Path | bytes | IO[bytes]) -> ImportedRequest:
    """The request a PNG file (a path, its bytes or an open file) says made it."""
    return import_chunks(read_text_chunks(source))


def import_chunks(chunks: Mapping[str, str]) -> ImportedRequest:
    """The request a PNG's text chunks (keyword -> text) describe."""
    for key, reader in _READERS:
        text = chunks.get(key)
        if text is None or (key == "prompt" and not text.lstrip().startswith("{")):
            # "prompt" is a common word; only ComfyUI's JSON graph claims the PNG.
            continue
        if len(text) > MAX_CHUNK_CHARS:
            raise MetadataError(
                f"The PNG's {key!r} text is {len(text):,} characters; Atelier reads at most {MAX_CHUNK_CHARS:,}."
            )
        return reader(text)
    raise MetadataError(
        "The PNG carries no generation metadata Atelier can read (Atelier, AUTOMATIC1111, ComfyUI or InvokeAI)."
    )


def read_text_chunks(source: str | Path | bytes | IO[bytes]) -> dict[str, str]:
    """Every text chunk (tEXt, zTXt, iTXt) of a PNG, by keyword, as storage/pngmeta.py reads them."""
    try:
        return read_png_metadata(source)
    except NotPng as error:
        raise MetadataError(
            f"The file is a {error.format} image; Atelier reads metadata from PNG files only."
        ) from None
    except PngMetadataError as error:
        raise MetadataError(str(error)) from None


# ---------------------------------------------------------------------------
# Sampler names. Each maps only where it is the same algorithm and schedule as
# ours (pipelines/samplers.py); anything else is listed in `unmapped`.

# AUTOMATIC1111 folded the schedule into the name ("DPM++ 2M Karras") until
# v1.9, which split it out as "Schedule type". "Automatic" there means the
# sampler's own default: Karras for DPM++ 2M, the model's schedule for the rest
# (modules/sd_samplers_kdiffusion.py, `samplers_k_diffusion` options).
# "Uniform" is the model's own schedule, which is what ours use.
_A1111_SAMPLERS: dict[tuple[str, str | None], str] = {
    **{
        (name, schedule): name
        for name in ("DPM++ 2M", "Euler", "Euler a", "DDIM", "UniPC", "LCM")
        for schedule in (None, "Uniform", "Automatic")
    },
    ("DPM++ 2M", "Automatic"): "DPM++ 2M Karras",
    ("DPM++ 2M", "Karras"): "DPM++ 2M Karras",
    ("DPM++ 2M Karras", None): "DPM++ 2M Karras",
}

# ComfyUI's sampler_name and scheduler (comfy/samplers.py). `uni_pc_bh2` is our
# UniPC exactly (diffusers' default solver_type); `uni_pc` is the same solver's
# bh1 variant, mapped to it too, so a rerun of such an image is close rather
# than exact, like any rerun made outside the tool that made the image.
_COMFY_SAMPLERS: dict[tuple[str, str], str] = {
    ("dpmpp_2m", "normal"): "DPM++ 2M",
    ("dpmpp_2m", "karras"): "DPM++ 2M Karras",
    ("euler", "normal"): "Euler",
    ("euler_ancestral", "normal"): "Euler a",
    ("ddim", "normal"): "DDIM",
    ("ddim", "ddim_uniform"): "DDIM",
    ("uni_pc", "normal"): "UniPC",
    ("uni_pc_bh2", "normal"): "UniPC",
    ("lcm", "normal"): "LCM",
    ("lcm", "sgm_uniform"): "LCM",
}

# InvokeAI's scheduler names (invokeai/backend/stable_diffusion/schedulers);
# a `_k` suffix is the Karras schedule.
_INVOKEAI_SAMPLERS: dict[str, str] = {
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_k": "DPM++ 2M Karras",
    "euler": "Euler",
    "euler_a": "Euler a",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "lcm": "LCM",
}


# ---------------------------------------------------------------------------
# Building a request field by field.


class _Builder:
    """A request built from one source: each field is checked alone, and one we cannot use is listed instead."""

    def __init__(self, source: str, prompt: Any) -> None:
        self.source = source
        self.unmapped: dict[str, str] = {}
        try:
            self.request: GenerationRequest = Text2ImgRequest(prompt=prompt)
        except RequestError as error:
            raise MetadataError(f"In the PNG's {_LABELS[source]} metadata, {error}") from None

    def set(self, found: Mapping[str, Any], **fields: Any) -> None:
        """Use `fields` if every one is known and valid; otherwise list what was `found` for them."""
        if all(value is not None for value in fields.values()):
            try:
                self.request = self.request.replace(**fields)
                return
            except RequestError:
                pass
        self.list(found)

    def list(self, found: Mapping[str, Any]) -> None:
        for key, value in found.items():
            if value is not None:
                self.unmapped[key] = _shown(value)

    def model(self, key: str, name: Any) -> None:
        if isinstance(name, str) and loadable_model(name):
            self.set({key: name}, model=name)
        else:
            self.list({key: name})

    def done(self) -> ImportedRequest:
        return ImportedRequest(source=self.source, request=self.request, unmapped=self.unmapped)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # as pipelines/sources.py's resolve_source


def loadable_model(name: str) -> bool:
    """Whether `name` is a model this machine can load without downloading anything."""
    if name == "embedded":
        return True
    if not name.strip() or len(name) > 4096:
        return False
    path = Path(name)
    try:
        if path.is_dir():
            return (path / "model_index.json").is_file()
        if path.suffix in (".safetensors", ".ckpt"):
            return path.is_file()
    except OSError:  # a name too long for the file system, say
        return False
    if _HUB_ID.match(name):
        from huggingface_hub import try_to_load_from_cache

        # Only the local cache: reading a dropped file must not reach the network.
        try:
            return isinstance(try_to_load_from_cache(name, "model_index.json"), str)
        except ValueError:  # huggingface_hub's stricter id rules ("--", "..")
            return False
    return False


def _int(value: Any) -> int | None:
    """A JSON whole number, or None for anything else (a bool or a string included)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    """A finite JSON number, or None for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int_text(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[0-9]{1,20}", text) else None


def _float_text(text: str) -> float | None:
    return float(text) if re.fullmatch(r"[0-9]{1,10}(\.[0-9]{1,10})?", text) else None


def _shown(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        text = f"({type(value).__name__} too deeply nested to show)"
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}… ({len(text):,} characters)"


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and giant integers
        raise MetadataError(f"The PNG's {_LABELS[source]} metadata is not valid JSON: {error}.") from None
    if not isinstance(value, dict):
        raise MetadataError(f"The PNG's {_LABELS[source]} metadata must be a JSON object, not {type(value).__name__}.")
    return value


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


# ---------------------------------------------------------------------------
# Atelier


def _from_atelier(text: str) -> ImportedRequest:
    data = _json_object(text, "atelier")
    # The chunk holds the whole batch's request plus this image's seed; image i
    # of a batch was made with seed + i, so that seed alone remakes this image.
    image_seed = data.pop("image_seed", None)
    if not isinstance(data.get("task"), str):
        raise MetadataError(f"In the PNG's Atelier metadata, task must be text; got {data.get('task')!r}.")
    try:
        request = request_from_dict(data)
        if image_seed is not None:
            if _int(image_seed) is None:
                raise RequestError(f"image_seed must be a whole number from 0 to {MAX_SEED}; got {image_seed!r}.")
            request = request.replace(seed=image_seed, batch_size=1)
    except RequestError as error:
        raise MetadataError(f"In the PNG's Atelier metadata, {error}") from None
    return ImportedRequest(source="atelier", request=request, unmapped={})


# ---------------------------------------------------------------------------
# AUTOMATIC1111

# One `Key: value` pair of the settings line, as upstream's `re_param`, except
# that a key starts at a word boundary and is at most 64 characters, matched
# possessively: a hostile line cannot make the search quadratic.
_A1111_PAIR = re.compile(r'\b(\w[\w \-/]{0,63}+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_NEGATIVE = "Negative prompt:"


def _split_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """The prompt, the negative prompt and the settings of a `parameters` text."""
    lines = text.strip().replace("\r\n", "\n").split("\n")
    settings: dict[str, str] = {}
    pairs = _A1111_PAIR.findall(lines[-1])
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
    prompt, negative, settings = _split_a1111(text)
    return {"Prompt": prompt, "Negative prompt": negative, **settings}


def _from_automatic1111(text: str) -> ImportedRequest:
    prompt, negative, settings = _split_a1111(text)
    built = _Builder("automatic1111", prompt)
    if negative:
        built.set({"Negative prompt": negative}, negative_prompt=negative)
    for key, name, read in (
        ("Steps", "num_inference_steps", _int_text),
        ("CFG scale", "guidance_scale", _float_text),
        ("Seed", "seed", _int_text),
    ):
        if key in settings:
            raw = settings.pop(key)
            built.set({key: raw}, **{name: read(raw)})
    if "Size" in settings:
        size = settings.pop("Size")
        match = _SIZE.fullmatch(size)
        built.set({"Size": size}, width=match and int(match[1]), height=match and int(match[2]))
    if "Sampler" in settings:
        found = {"Sampler": settings.pop("Sampler"), "Schedule type": settings.pop("Schedule type", None)}
        built.set(found, sampler=_A1111_SAMPLERS.get((found["Sampler"], found["Schedule type"])))
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
            variation_seed=_int_text(found["Variation seed"]),
            variation_strength=_float_text(strength) if strength is not None else None,
        )
    if "Refiner" in settings:
        found = {"Refiner": settings.pop("Refiner"), "Refiner switch at": settings.pop("Refiner switch at", "0.8")}
        if loadable_model(found["Refiner"]):  # A1111 writes a checkpoint's title; only a source we can load maps
            built.set(found, refiner=found["Refiner"], refiner_switch=_float_text(found["Refiner switch at"]))
        else:
            built.list(found)
    built.list(settings)
    return built.done()


# ---------------------------------------------------------------------------
# ComfyUI

_COMFY_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
_COMFY_OUTPUT_NODES = ("SaveImage", "PreviewImage")  # where the image went, not how it was made
# KSampler(Advanced) settings that, at these values, mean what every run of ours does.
_COMFY_PLAIN: dict[str, Callable[[Any, int], bool]] = {
    "denoise": lambda value, steps: _float(value) == 1.0,
    "add_noise": lambda value, steps: value == "enable",
    "start_at_step": lambda value, steps: _int(value) == 0,
    "end_at_step": lambda value, steps: (_int(value) or 0) >= steps,
    "return_with_leftover_noise": lambda value, steps: value == "disable",
}


def _link(value: Any) -> str | None:
    """The node id a `[node id, output index]` input points to."""
    if isinstance(value, list) and len(value) == 2 and type(value[0]) in (str, int):
        return str(value[0])
    return None


def _settings(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A node's inputs that are values, not links."""
    return {key: value for key, value in inputs.items() if _link(value) is None}


class _Graph:
    """ComfyUI's API-form graph, and which of its nodes the request was read from."""

    def __init__(self, text: str) -> None:
        self.nodes: dict[str, tuple[str, dict[str, Any]]] = {}
        for node_id, node in _json_object(text, "comfyui").items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                raise MetadataError(f"Node {node_id!r} of the PNG's ComfyUI graph has no class_type.")
            if not isinstance(node.get("inputs"), dict):
                raise MetadataError(f"Node {node_id!r} of the PNG's ComfyUI graph has no inputs object.")
            self.nodes[node_id] = (node["class_type"], node["inputs"])
        self.used: set[str] = set()

    def input_node(self, node_id: str, name: str, wanted: str, *, through: str | None = None) -> str | None:
        """The `wanted` node that input `name` of a node links to, directly or along `through` inputs."""
        seen: set[str] = set()
        current = _link(self.nodes[node_id][1].get(name))
        while current in self.nodes and current not in seen and len(seen) < _MAX_HOPS:
            seen.add(current)
            class_type, inputs = self.nodes[current]
            if class_type == wanted:
                return current
            current = _link(inputs.get(through)) if through else None
        return None

    def sampler(self) -> str:
        samplers = [node_id for node_id, (class_type, _) in self.nodes.items() if class_type in _COMFY_SAMPLER_NODES]
        if not samplers:
            raise MetadataError("The PNG's ComfyUI graph has no KSampler or KSamplerAdvanced node.")
        if len(samplers) == 1:
            return samplers[0]
        # A hires-fix or refiner pass starts from the first pass's latent; the first pass from an empty one.
        first = [node_id for node_id in samplers if self.input_node(node_id, "latent_image", "EmptyLatentImage")]
        if len(first) != 1:
            raise MetadataError(
                f"The PNG's ComfyUI graph has {len(samplers)} KSampler nodes and {len(first) or 'none'} of them "
                "start from an EmptyLatentImage; Atelier reads a graph with one first pass."
            )
        return first[0]


def _from_comfyui(text: str) -> ImportedRequest:
    graph = _Graph(text)
    # 1. The sampler node, and the prompts its links reach. Conditioning may
    #    pass through ControlNet or area nodes on its way; those stay listed.
    sampler_id = graph.sampler()
    graph.used.add(sampler_id)
    class_type, inputs = graph.nodes[sampler_id]
    name = f"{class_type}#{sampler_id}"
    prompts: dict[str, str] = {}
    for which in ("positive", "negative"):
        text_id = graph.input_node(sampler_id, which, "CLIPTextEncode", through="conditioning")
        text = graph.nodes[text_id][1].get("text") if text_id is not None else None
        if text_id is not None and isinstance(text, str):
            graph.used.add(text_id)
            prompts[which] = text
    if "positive" not in prompts:
        raise MetadataError(f"The PNG's ComfyUI {name} does not take its positive input from a CLIPTextEncode text.")
    built = _Builder("comfyui", prompts["positive"])
    if prompts.get("negative"):
        built.set({f"{name}.negative": prompts["negative"]}, negative_prompt=prompts["negative"])

    # 2. The sampler's own settings.
    settings = _settings(inputs)
    seed_key = "noise_seed" if class_type == "KSamplerAdvanced" else "seed"
    for key, field_name, read in (
        (seed_key, "seed", _int),
        ("steps", "num_inference_steps", _int),
        ("cfg", "guidance_scale", _float),
    ):
        if key in settings:
            raw = settings.pop(key)
            built.set({f"{name}.{key}": raw}, **{field_name: read(raw)})
    if "sampler_name" in settings or "scheduler" in settings:
        sampler_name, scheduler = settings.pop("sampler_name", None), settings.pop("scheduler", None)
        both_text = isinstance(sampler_name, str) and isinstance(scheduler, str)
        ours = _COMFY_SAMPLERS.get((sampler_name, scheduler)) if both_text else None
        built.set({f"{name}.sampler_name": sampler_name, f"{name}.scheduler": scheduler}, sampler=ours)
    steps = built.request.num_inference_steps
    plain = {key for key, value in settings.items() if key in _COMFY_PLAIN and _COMFY_PLAIN[key](value, steps)}
    built.list({f"{name}.{key}": value for key, value in settings.items() if key not in plain})

    # 3. Size and model, from the nodes the sampler's links reach.
    latent_id = graph.input_node(sampler_id, "latent_image", "EmptyLatentImage")
    if latent_id is not None:
        graph.used.add(latent_id)
        node = f"EmptyLatentImage#{latent_id}"
        latent = _settings(graph.nodes[latent_id][1])
        width, height = latent.pop("width", None), latent.pop("height", None)
        built.set({f"{node}.width": width, f"{node}.height": height}, width=_int(width), height=_int(height))
        if _int(latent.get("batch_size")) == 1:
            del latent["batch_size"]
        built.list({f"{node}.{key}": value for key, value in latent.items()})
    # The model may pass through LoRA loaders on its way; those stay listed.
    checkpoint_id = graph.input_node(sampler_id, "model", "CheckpointLoaderSimple", through="model")
    if checkpoint_id is not None:
        graph.used.add(checkpoint_id)
        node = f"CheckpointLoaderSimple#{checkpoint_id}"
        checkpoint = _settings(graph.nodes[checkpoint_id][1])
        if "ckpt_name" in checkpoint:
            built.model(f"{node}.ckpt_name", checkpoint.pop("ckpt_name"))
        built.list({f"{node}.{key}": value for key, value in checkpoint.items()})

    # 4. Every other node that sets something: LoRAs, CLIP skip, upscalers, other samplers.
    for node_id, (other_class, other_inputs) in graph.nodes.items():
        if node_id in graph.used or other_class in _COMFY_OUTPUT_NODES:
            continue
        settings = _settings(other_inputs)
        if settings:
            built.list({f"{other_class}#{node_id}": settings})
    return built.done()


# ---------------------------------------------------------------------------
# InvokeAI

# Settings that, at these values, mean what every run of ours does: text to
# image, no CLIP skip, no CFG rescale, noise drawn on the CPU.
_INVOKEAI_PLAIN: dict[str, Callable[[Any], bool]] = {
    "generation_mode": lambda value: value in ("txt2img", "sdxl_txt2img"),
    "clip_skip": lambda value: _int(value) == 0,
    "cfg_rescale_multiplier": lambda value: _float(value) == 0.0,
    "rand_device": lambda value: value == "cpu",
}


def _from_invokeai(text: str) -> ImportedRequest:
    meta = _json_object(text, "invokeai")
    built = _Builder("invokeai", meta.pop("positive_prompt", None))
    negative = meta.pop("negative_prompt", None)
    if not _empty(negative):
        built.set({"negative_prompt": negative}, negative_prompt=negative)
    for key, field_name, read in (
        ("seed", "seed", _int),
        ("steps", "num_inference_steps", _int),
        ("cfg_scale", "guidance_scale", _float),
    ):
        if key in meta:
            raw = meta.pop(key)
            built.set({key: raw}, **{field_name: read(raw)})
    if "width" in meta or "height" in meta:
        width, height = meta.pop("width", None), meta.pop("height", None)
        built.set({"width": width, "height": height}, width=_int(width), height=_int(height))
    if "scheduler" in meta:
        scheduler = meta.pop("scheduler")
        ours = _INVOKEAI_SAMPLERS.get(scheduler) if isinstance(scheduler, str) else None
        built.set({"scheduler": scheduler}, sampler=ours)
    if "model" in meta:
        model = meta.pop("model")
        if isinstance(model, dict):
            # InvokeAI 4 and later: {"name", "key", "hash", "base", "type"}; InvokeAI 3: {"model_name", ...}.
            model = dict(model)
            model_name = model.pop("name", None) or model.pop("model_name", None)
            if model_name is not None:
                built.model("model", model_name)
            built.list({f"model.{key}": value for key, value in model.items() if not _empty(value)})
        else:
            built.model("model", model)
    built.list(
        {
            key: value
            for key, value in meta.items()
            if not (_empty(value) or (key in _INVOKEAI_PLAIN and _INVOKEAI_PLAIN[key](value)))
        }
    )
    return built.done()


_READERS: tuple[tuple[str, Callable[[str], ImportedRequest]], ...] = (
    ("atelier", _from_atelier),
    ("invokeai_metadata", _from_invokeai),
    ("prompt", _from_comfyui),
    ("parameters", _from_automatic1111),
)
