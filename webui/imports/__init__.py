"""Read an image's generation metadata back into one of our requests, whichever studio wrote it.

Which part does what:

- `files.py`: the file. PNG text chunks (through storage/pngmeta.py), A1111's
  stealth metadata in a PNG's pixels, and a JPEG's or WebP's EXIF
  (UserComment, MakerNote, Software), all under the keywords below.
- This module: which tool wrote it, by the keywords present, in this order:
  `atelier` (our own exact request), `invokeai_metadata` (InvokeAI 3-5),
  `sd-metadata` or `Dream` (InvokeAI 2), `prompt` holding a JSON graph
  (ComfyUI), `Comment` with `Software` "NovelAI", and `parameters`: Fooocus's
  JSON scheme, else A1111's infotext (A1111, Forge, Fooocus's `a1111` scheme).
- `a1111.py`, `comfyui.py` (with `comfyui_graph.py`), `invokeai.py`,
  `fooocus.py`, `novelai.py`: one reader per tool, each mapping the tool's
  fields onto ours; `samplers.py` maps sampler names; `common.py` holds the
  result type and the field-by-field builder that lists what it cannot map.

A field we cannot use keeps our default, and what was found for it goes into
`unmapped` as written, with everything else found but not mapped. Nothing is
guessed: a sampler maps only where it is the same algorithm and schedule, a
model or LoRA only where Atelier's own lists (or this machine, without a
download) have it. The pictures, checkpoints, LoRAs and ControlNets the tool
used are named in `inputs`, each with the name it was matched to here.

Why not the `sd-parsers` library (PyPI, 0.6, MIT), which installs cleanly
beside our torch and Pillow: we read its source and use none of it. Its
ComfyUI parser needs the `workflow` chunk as well as `prompt` (a file
carrying only the API graph parses as nothing) and follows no image, mask,
ControlNet or refiner links; its InvokeAI parser drops InvokeAI 4's `{"name":
...}` model silently; its A1111 parser splits quoted values (`Lora hashes:
"a: 1, b: 2"`) on their commas; its extractors keep the last image's text in
module globals keyed by `id(image)` (a reused id in a server returns another
image's metadata), read only the gzipped alpha variant of stealth metadata,
and decode every UserComment as UTF-16 whatever its prefix says; and it maps
no sampler or field onto diffusers', which is the work here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO

from pipelines.requests import MAX_SEED, RequestError, request_from_dict
from webui.imports.a1111 import read_a1111
from webui.imports.comfyui import read_comfyui
from webui.imports.common import (
    MAX_CHUNK_CHARS,
    SOURCES,
    Catalog,
    ImportedRequest,
    MetadataError,
    Reference,
    as_int,
    json_object,
    loadable_model,
)
from webui.imports.files import read_file_text
from webui.imports.fooocus import read_fooocus
from webui.imports.invokeai import read_dream, read_invokeai, read_invokeai2
from webui.imports.novelai import read_novelai
from webui.models import ModelListError, studio_models
from webui.settings import Settings

__all__ = [
    "MAX_CHUNK_CHARS",
    "SOURCES",
    "Catalog",
    "ImportedRequest",
    "MetadataError",
    "Reference",
    "import_chunks",
    "import_file",
    "import_png",
    "loadable_model",
    "read_file_text",
    "studio_catalog",
]


def import_file(source: str | Path | bytes | IO[bytes], catalog: Catalog | None = None) -> ImportedRequest:
    """The request a PNG, JPEG or WebP file (a path, its bytes or an open file) says made it."""
    return import_chunks(read_file_text(source), catalog)


import_png = import_file  # the name the CLI and the Text to image tab have always called


def import_chunks(chunks: Mapping[str, str], catalog: Catalog | None = None) -> ImportedRequest:
    """The request a file's metadata (keyword -> text) describes."""
    for key, text in chunks.items():
        if key in _KEYS and len(text) > MAX_CHUNK_CHARS:
            raise MetadataError(
                f"The file's {key!r} text is {len(text):,} characters; Atelier reads at most {MAX_CHUNK_CHARS:,}."
            )
    if "atelier" in chunks:
        return _read_atelier(chunks["atelier"])
    if "invokeai_metadata" in chunks:
        return read_invokeai(chunks["invokeai_metadata"], catalog)
    if "sd-metadata" in chunks:
        return read_invokeai2(chunks["sd-metadata"], catalog)
    if "Dream" in chunks:
        return read_dream(chunks["Dream"], catalog)
    # "prompt" is a common word; only ComfyUI's JSON graph claims the file.
    if chunks.get("prompt", "").lstrip().startswith("{"):
        return read_comfyui(chunks["prompt"], catalog)
    if "Comment" in chunks and chunks.get("Software") == "NovelAI":
        return read_novelai(chunks, catalog)
    if "parameters" in chunks:
        text = chunks["parameters"]
        if chunks.get("fooocus_scheme") == "fooocus" or text.lstrip().startswith("{"):
            return read_fooocus(text, catalog)
        fooocus = chunks.get("fooocus_scheme") == "a1111" or "Version: Fooocus" in text
        return read_a1111(text, catalog, source="fooocus" if fooocus else "automatic1111")
    raise MetadataError(
        "The file carries no generation metadata Atelier can read "
        "(Atelier, AUTOMATIC1111, ComfyUI, Fooocus, InvokeAI or NovelAI)."
    )


def studio_catalog(settings: Settings) -> Catalog:
    """A studio's models and LoRA names, for picking what a file names (a LoRA is its file's stem)."""
    try:
        models = [(entry.name, entry.source) for entry in studio_models(settings)]
    except ModelListError:  # the model picker says what is wrong with the list; imports still read
        models = []
    folder = settings.loras_folder
    loras = [path.stem for path in folder.glob("*.safetensors")] if folder.is_dir() else []
    return Catalog.of(models=models, loras=loras)


_KEYS = ("atelier", "invokeai_metadata", "sd-metadata", "Dream", "prompt", "parameters", "Comment")


def _read_atelier(text: str) -> ImportedRequest:
    data = json_object(text, "atelier")
    # The chunk holds the whole batch's request plus this image's seed; image i
    # of a batch was made with seed + i, so that seed alone remakes this image.
    image_seed = data.pop("image_seed", None)
    if not isinstance(data.get("task"), str):
        raise MetadataError(f"In the file's Atelier metadata, task must be text; got {data.get('task')!r}.")
    try:
        request = request_from_dict(data)
        if image_seed is not None:
            if as_int(image_seed) is None:
                raise RequestError(f"image_seed must be a whole number from 0 to {MAX_SEED}; got {image_seed!r}.")
            request = request.replace(seed=image_seed, batch_size=1)
    except RequestError as error:
        raise MetadataError(f"In the file's Atelier metadata, {error}") from None
    return ImportedRequest(source="atelier", request=request, unmapped={}, task=request.task)
