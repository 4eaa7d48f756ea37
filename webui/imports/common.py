"""What every reader shares: the result type, the error, and the builder that maps one field at a time.

A reader never guesses: a field we can use is set (and validated by the
request type); anything else found in the file is listed in `unmapped` as
written there. Files, models, LoRAs and ControlNets the other tool used are
named in `inputs`, with the name in Atelier's own lists each was matched to,
if any.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.controlnets import REGISTRY
from pipelines.requests import (
    GenerationRequest,
    ImageRef,
    RequestError,
    Text2ImgRequest,
    request_from_dict,
)

# Generous for every tool's real chunks (a large ComfyUI graph is tens of KB);
# Pillow bounds compressed chunks at 1 MiB but plain tEXt not at all.
MAX_CHUNK_CHARS = 1_000_000
_MAX_SHOWN = 1_000  # characters of one unmapped value

LABELS = {
    "atelier": "Atelier",
    "invokeai": "InvokeAI",
    "comfyui": "ComfyUI",
    "automatic1111": "AUTOMATIC1111",
    "fooocus": "Fooocus",
    "novelai": "NovelAI",
}
SOURCES = tuple(LABELS)

# Reference kinds that are pictures the user must give again: a file holds only its own output.
IMAGE_KINDS = ("image", "mask", "control image")


class MetadataError(ValueError):
    """A file whose metadata cannot become a request; the message is one sentence saying why."""


@dataclass(frozen=True)
class Reference:
    """Something the other tool's file names by its own name: a picture, a checkpoint, a LoRA, a ControlNet."""

    kind: str  # image, mask, control image, checkpoint, refiner, lora, controlnet, vae, text encoder, upscale model
    name: str  # as the other tool wrote it
    field: str | None = None  # the request field it fills: image, mask_image, controls.0.image, model, ...
    picked: str | None = None  # the name in Atelier's lists it was matched to, or None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "field": self.field, "picked": self.picked}


@dataclass(frozen=True)
class Catalog:
    """Atelier's own lists, to pick a model or LoRA by the name another tool gave it."""

    models: Mapping[str, str] = field(default_factory=dict)  # model name -> source
    loras: frozenset[str] = frozenset()  # LoRA names (file stems) in the LoRA folder

    @classmethod
    def of(cls, *, models: Iterable[tuple[str, str]] = (), loras: Iterable[str] = ()) -> Catalog:
        return cls(models=dict(models), loras=frozenset(loras))

    def model(self, name: str) -> str | None:
        """The source of the listed model another tool's checkpoint name means, or None.

        Names match by their letters and digits alone ("flux1-dev.safetensors"
        is "black-forest-labs/FLUX.1-dev"), as tools respell them.
        """
        if name in self.models.values():
            return name
        wanted = _key(file_stem(name))
        for listed, source in self.models.items():
            if wanted in (_key(listed), _key(file_stem(source))):
                return source
        return name if loadable_model(name) else None

    def lora(self, name: str) -> str | None:
        wanted = _key(file_stem(name))
        return next((listed for listed in sorted(self.loras) if _key(listed) == wanted), None)


def controlnet_named(name: str) -> str | None:
    """The listed ControlNet whose weights another tool's name is, by the upstream repository's name."""
    wanted = _key(file_stem(name).removesuffix("_fp16"))
    for entry in REGISTRY.values():
        if wanted in (_key(entry.name), _key(entry.location.rsplit("/", 1)[-1])):
            return entry.name
    return None


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower()) or name


def file_stem(name: str) -> str:
    """`sdxl\\detail.safetensors` -> `detail`: tools write subfolders with either slash."""
    last = re.split(r"[\\/]", name)[-1]
    return last.rsplit(".", 1)[0] if "." in last and last.rsplit(".", 1)[1].lower() in _WEIGHT_SUFFIXES else last


_WEIGHT_SUFFIXES = {"safetensors", "ckpt", "pt", "pth", "bin", "sft", "gguf"}


@dataclass(frozen=True)
class ImportedRequest:
    """What a file says made it: the shared fields as a request, the task and its own fields, and the rest."""

    source: str  # one of SOURCES
    request: GenerationRequest  # the fields every task shares, validated; fields not found keep their defaults
    unmapped: dict[str, str] = field(default_factory=dict)  # found but not used, as written in the file
    task: str = "txt2img"  # the tab that remakes it: txt2img, img2img, inpaint or controlnet
    task_fields: dict[str, Any] = field(default_factory=dict)  # strength, controls (without their images) ...
    inputs: tuple[Reference, ...] = ()

    @property
    def needs(self) -> list[Reference]:
        """The pictures the user must give again (a file carries only its own output)."""
        return [ref for ref in self.inputs if ref.kind in IMAGE_KINDS and ref.field is not None]

    def to_json(self) -> str:
        """The request's own fields with the task's, plus `source`, `unmapped` and `inputs`."""
        data = {**self.request.to_dict(), "task": self.task, **self.task_fields}
        return json.dumps(
            {
                "source": self.source,
                **data,
                "unmapped": self.unmapped,
                "inputs": [ref.to_dict() for ref in self.inputs],
            }
        )

    def complete(self, images: Mapping[str, Image.Image]) -> GenerationRequest:
        """The whole request once the pictures are given, by the field each `needs` names."""
        data: dict[str, Any] = {**self.request.to_dict(), "task": self.task, **json.loads(json.dumps(self.task_fields))}
        for ref in self.needs:
            image = images.get(ref.field)  # type: ignore[arg-type]
            if image is None:
                raise MetadataError(f"{ref.field} needs a picture: the {LABELS[self.source]} file used {ref.name!r}.")
            if ref.field.startswith("controls."):
                data["controls"][int(ref.field.split(".")[1])]["image"] = ImageRef.of(image)
            else:
                data[ref.field] = ImageRef.of(image)
        for index, unit in enumerate(data.get("controls", [])):
            if not unit.get("controlnet"):
                raise MetadataError(
                    f"controls.{index}.controlnet needs a ControlNet from Atelier's list; the file's is not in it."
                )
        try:
            return request_from_dict(data)
        except RequestError as error:
            raise MetadataError(str(error)) from None


class Builder:
    """A request built from one source: each field is checked alone, and one we cannot use is listed instead."""

    def __init__(self, source: str, prompt: Any, catalog: Catalog | None = None) -> None:
        self.source = source
        self.catalog = catalog or Catalog()
        self.unmapped: dict[str, str] = {}
        self.task = "txt2img"
        self.task_fields: dict[str, Any] = {}
        self.inputs: list[Reference] = []
        try:
            self.request: GenerationRequest = Text2ImgRequest(prompt=prompt)
        except RequestError as error:
            raise MetadataError(f"In the file's {LABELS[source]} metadata, {error}") from None

    def set(self, found: Mapping[str, Any], **fields: Any) -> bool:
        """Use `fields` if every one is known and valid; otherwise list what was `found` for them."""
        if all(value is not None for value in fields.values()):
            try:
                self.request = self.request.replace(**fields)
                return True
            except (RequestError, TypeError):
                pass
        self.list(found)
        return False

    def take(
        self, found: dict[str, Any], fields: Iterable[tuple[str, str, Callable[[Any], Any]]], *, prefix: str = ""
    ) -> None:
        """Each (key, field, read) whose key is in `found`: taken out, read and set (listed as `prefix + key` if unreadable)."""
        for key, field_name, read in fields:
            if key in found:
                raw = found.pop(key)
                self.set({prefix + key: raw}, **{field_name: read(raw)})

    def take_size(self, found: dict[str, Any], *, prefix: str = "") -> None:
        """`width` and `height`, taken out of `found` together, since a size is set whole or not at all."""
        if "width" in found or "height" in found:
            width, height = found.pop("width", None), found.pop("height", None)
            self.set({prefix + "width": width, prefix + "height": height}, width=as_int(width), height=as_int(height))

    def list(self, found: Mapping[str, Any]) -> None:
        for key, value in found.items():
            if value is not None:
                self.unmapped[key] = shown(value)

    def refer(self, kind: str, name: Any, field: str | None = None, picked: str | None = None) -> None:
        if isinstance(name, str) and name:
            reference = Reference(kind, name, field, picked)
            if reference not in self.inputs:
                self.inputs.append(reference)

    def model(self, key: str, name: Any, *, kind: str = "checkpoint") -> None:
        """Pick the listed model the name means; list it otherwise. `kind` refiner sets the refiner."""
        picked = self.catalog.model(name) if isinstance(name, str) and name.strip() else None
        target = "refiner" if kind == "refiner" else "model"
        if picked is None or not self.set({key: name}, **{target: picked}):
            self.list({key: name})
            picked = None
        self.refer(kind, name, target, picked)

    def lora(self, key: str, name: Any, weight: Any) -> bool:
        """Add a LoRA that is in Atelier's folder; a missing one is named and listed."""
        picked = self.catalog.lora(name) if isinstance(name, str) else None
        self.refer("lora", name, "loras", picked)
        number = as_float(weight)
        if picked is None or number is None or any(listed == picked for listed, _ in self.request.loras):
            return False
        return self.set({key: name}, loras=(*self.request.loras, (picked, number)))

    def done(self) -> ImportedRequest:
        return ImportedRequest(
            source=self.source,
            request=self.request,
            unmapped=self.unmapped,
            task=self.task,
            task_fields=self.task_fields,
            inputs=tuple(self.inputs),
        )


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
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL in it
        return False
    if _HUB_ID.match(name):
        from huggingface_hub import try_to_load_from_cache

        # Only the local cache: reading a dropped file must not reach the network.
        try:
            return isinstance(try_to_load_from_cache(name, "model_index.json"), str)
        except ValueError:  # huggingface_hub's stricter id rules ("--", "..")
            return False
    return False


def as_int(value: Any) -> int | None:
    """A JSON whole number, or None for anything else (a bool or a string included)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    """A finite JSON number, or None for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past float's range
            return None
        return number if math.isfinite(number) else None
    return None


def int_text(text: Any) -> int | None:
    return int(text) if isinstance(text, str) and re.fullmatch(r"[0-9]{1,20}", text.strip()) else None


def float_text(text: Any) -> float | None:
    if isinstance(text, str) and re.fullmatch(r"-?[0-9]{1,10}(\.[0-9]{1,10})?", text.strip()):
        return float(text)
    return None


def shown(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        text = f"({type(value).__name__} too deeply nested to show)"
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}… ({len(text):,} characters)"


def json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and giant integers
        raise MetadataError(f"The file's {LABELS[source]} metadata is not valid JSON: {error}.") from None
    if not isinstance(value, dict):
        raise MetadataError(f"The file's {LABELS[source]} metadata must be a JSON object, not {type(value).__name__}.")
    return value


def empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}
