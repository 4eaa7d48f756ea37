"""The models a studio offers: the embedded one, the one it was started with, and a list in the data folder.

``models.json`` in the data folder (or the file ``ATELIER_MODELS_FILE`` names) is a list of
entries, each with a ``name`` people pick, a ``source`` the engine loads (a
hub id, a diffusers folder or a single ``.safetensors`` file), its family
and the settings it is meant to run at::

    [{"name": "SD 1.5", "source": "stable-diffusion-v1-5/stable-diffusion-v1-5", "family": "sd",
      "sampler": "DPM++ 2M Karras", "num_inference_steps": 25, "width": 512, "height": 512, "guidance_scale": 7}]

A request records the source (and the engine the weights' revision), so a
rerun loads the same weights, or says they are gone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines import embedded
from pipelines.requests import MAX_GUIDANCE, MAX_SIZE, MAX_STEPS, MIN_SIZE
from pipelines.samplers import SAMPLER_NAMES
from webui.settings import Settings

FAMILIES = ("embedded", "sd", "sdxl", "flux")

# What each family is meant to run at when its entry does not say; the
# embedded model's own settings are on its card (pipelines/embedded).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd": {"sampler": "DPM++ 2M", "num_inference_steps": 25, "width": 512, "height": 512, "guidance_scale": 7.0},
    "sdxl": {"sampler": "DPM++ 2M", "num_inference_steps": 30, "width": 1024, "height": 1024, "guidance_scale": 6.0},
    "flux": {"sampler": "Euler", "num_inference_steps": 28, "width": 1024, "height": 1024, "guidance_scale": 3.5},
}


def model_defaults(model: str) -> dict[str, Any]:
    """Size, steps, guidance, sampler and a first prompt for a model named before anything is loaded.

    The embedded model's come from its card; any other model starts from the
    SD family's, whatever it turns out to be (a tab's fields, or the CLI's
    options left out).
    """
    if model == "embedded":
        return embedded.defaults()
    return {**FAMILY_DEFAULTS["sd"], "prompt": ""}


class ModelListError(ValueError):
    """The model list cannot be read; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    family: str
    sampler: str
    num_inference_steps: int
    width: int
    height: int
    guidance_scale: float

    def defaults(self) -> dict[str, Any]:
        """The settings a tab starts from when this model is picked."""
        return {key: value for key, value in asdict(self).items() if key not in ("name", "source", "family")}

    @property
    def negative_prompt_applies(self) -> bool:
        return self.family != "flux"  # FLUX's guidance is distilled into the model


def studio_models(settings: Settings) -> list[ModelEntry]:
    """The models a studio with these settings offers (see `load_models`)."""
    return load_models(settings.data_dir, settings.model, file=settings.models_file)


def load_models(data_dir: Path, started_with: str = "embedded", *, file: str | Path = "") -> list[ModelEntry]:
    """The embedded model first, the model the studio was started with, then the list's entries.

    The list is `file` (settings' `models_file`), else the data folder's models.json.
    """
    own = model_defaults("embedded")
    entries = [
        ModelEntry(
            "embedded",
            "embedded",
            "embedded",
            own["sampler"],
            own["num_inference_steps"],
            own["width"],
            own["height"],
            float(own["guidance_scale"]),
        )
    ]
    path = Path(file) if file else data_dir / "models.json"
    if path.is_file():
        try:
            listed = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ModelListError(f"{path} is not a JSON list of models: {error}.") from error
        if not isinstance(listed, list):
            raise ModelListError(f"{path} must hold a JSON list of models; got {type(listed).__name__}.")
        entries += [_entry(path, number, item) for number, item in enumerate(listed, start=1)]
    if started_with not in {entry.source for entry in entries}:
        entries.insert(1, _entry(Path("ATELIER_MODEL"), 1, {"name": started_with, "source": started_with}))
    names = [entry.name for entry in entries]
    for name in names:
        if names.count(name) > 1:
            raise ModelListError(f"{path}: the name {name!r} is used twice; each model needs its own name.")
    return entries


def find(entries: list[ModelEntry], source_or_name: str) -> ModelEntry | None:
    return next((e for e in entries if source_or_name in (e.name, e.source)), None)


def _entry(path: Path, number: int, item: Any) -> ModelEntry:
    where = f"{path}, entry {number}"
    if not isinstance(item, dict):
        raise ModelListError(f"{where} must be an object with a name and a source.")
    unknown = sorted(set(item) - {"name", "source", "family", *FAMILY_DEFAULTS["sd"]})
    if unknown:
        raise ModelListError(f"{where} has unknown fields {', '.join(unknown)}.")
    for key in ("name", "source"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise ModelListError(f"{where}: {key} must be text.")
    family = item.get("family") or guess_family(item["source"])
    if family not in FAMILIES[1:]:
        raise ModelListError(f"{where}: family must be one of {', '.join(FAMILIES[1:])}; got {family!r}.")
    values = {**FAMILY_DEFAULTS[family], **{k: v for k, v in item.items() if k in FAMILY_DEFAULTS["sd"]}}
    _check(where, values)
    return ModelEntry(
        name=item["name"],
        source=item["source"],
        family=family,
        sampler=values["sampler"],
        num_inference_steps=int(values["num_inference_steps"]),
        width=int(values["width"]),
        height=int(values["height"]),
        guidance_scale=float(values["guidance_scale"]),
    )


def guess_family(source: str) -> str:
    """From the name alone, before anything is loaded; the engine checks the real thing."""
    lowered = source.lower()
    if "flux" in lowered:
        return "flux"
    if "xl" in lowered:
        return "sdxl"
    return "sd"


def _check(where: str, values: dict[str, Any]) -> None:
    if values["sampler"] not in SAMPLER_NAMES:
        raise ModelListError(f"{where}: sampler must be one of {', '.join(SAMPLER_NAMES)}; got {values['sampler']!r}.")
    for key, low, high in (
        ("num_inference_steps", 1, MAX_STEPS),
        ("width", MIN_SIZE, MAX_SIZE),
        ("height", MIN_SIZE, MAX_SIZE),
    ):
        value = values[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ModelListError(f"{where}: {key} must be a whole number from {low} to {high}; got {value!r}.")
    guidance = values["guidance_scale"]
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ModelListError(f"{where}: guidance_scale must be a number from 0 to {MAX_GUIDANCE:g}; got {guidance!r}.")
