"""Where a model lives, and which weights a record was made with.

A model is named as the user wrote it: ``embedded``, a local diffusers
folder, a single ``.safetensors``/``.ckpt`` file or a hub id. ``resolve_source``
says which, without loading anything; the revision functions give the
identity a generation records, so a record says which weights made an image
(a hub snapshot's revision is its commit, see ``pipelines.loaders``).

No torch or diffusers here: the studio checks a queued job's model with
``resolve_source`` before anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines import embedded
from pipelines.errors import ModelError

EMBEDDED = "embedded"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class ModelSource:
    name: str  # as the user wrote it; the key everything else uses
    kind: str  # embedded | folder | single_file | hub
    location: str  # a path, or the hub id


def resolve_source(model: str) -> ModelSource:
    """Where ``model`` lives, without loading anything."""
    if model == EMBEDDED:
        if not (embedded.FOLDER / "model_index.json").is_file():
            raise ModelError(f"the embedded model's weights are missing from {embedded.FOLDER}; reinstall Atelier.")
        return ModelSource(model, "embedded", str(embedded.FOLDER))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"model folder {model!r} has no model_index.json; it must be a diffusers pipeline folder.")
        return ModelSource(model, "folder", str(path.resolve()))
    if path.suffix in _SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelError(f"model file {model!r} does not exist.")
        return ModelSource(model, "single_file", str(path.resolve()))
    if _HUB_ID.match(model) and not model.startswith((".", "~")):
        return ModelSource(model, "hub", model)
    if path.is_absolute() or model.startswith((".", "~")):
        raise ModelError(
            f"model {model!r} is not on this machine (no such folder or file): its weights are gone or were never here."
        )
    raise ModelError(
        f"model must be 'embedded', a diffusers folder, a .safetensors file or a hub id like 'org/name'; got {model!r}."
    )


def folder_revision(folder: Path) -> str:
    """The sha256 of a diffusers folder's weight files (names and bytes)."""
    return _hash_files(_weight_files(folder), folder)


def file_revision(path: Path) -> str:
    """The sha256 of a single-file checkpoint, its name included."""
    return _hash_files([path], path.parent)


# Files that decide what a model computes (weights, configs, tokenizer); a
# card or a training log can change without changing a single pixel.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".json", ".txt", ".model"}
_NOT_WEIGHTS = {"atelier.json"}


def _weight_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in _WEIGHT_SUFFIXES
        and p.name not in _NOT_WEIGHTS
        and not p.name.startswith((".", "evaluation"))  # a model card's scores are not weights
    ]


def _hash_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
