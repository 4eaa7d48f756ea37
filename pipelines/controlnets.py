"""The ControlNet models the studio knows, per base family, and where each lives.

A ControlNet joins the loaded base model with ``from_pipe`` (the base is
never loaded twice); this module only says where its weights are. A request
may also name a ControlNet directly: a diffusers folder, a single
``.safetensors`` file or a hub id. Whether it fits the base is decided by
the weights themselves (their cross-attention width must be the base UNet's),
not by a name, so a custom one is checked like a listed one.

No torch here: the UI lists these before anything heavy is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipelines import embedded


@dataclass(frozen=True)
class ControlNetEntry:
    name: str
    family: str  # the base family it was trained for: embedded | sd | sdxl | flux
    location: str  # hub id, folder or file
    preprocessor: str  # the preprocessor whose output it was trained on
    label: str


REGISTRY: dict[str, ControlNetEntry] = {
    entry.name: entry
    for entry in (
        ControlNetEntry(
            "embedded-canny",
            "embedded",
            str(embedded.CONTROLNET_FOLDER),
            "canny",
            "Canny edges, for the embedded model (ships with Atelier)",
        ),
        ControlNetEntry("sd15-canny", "sd", "lllyasviel/control_v11p_sd15_canny", "canny", "SD 1.5 Canny edges"),
        ControlNetEntry(
            "sd15-lineart", "sd", "lllyasviel/control_v11p_sd15_lineart", "lineart_standard", "SD 1.5 line art"
        ),
        ControlNetEntry(
            "sd15-shuffle", "sd", "lllyasviel/control_v11e_sd15_shuffle", "shuffle", "SD 1.5 content shuffle"
        ),
        ControlNetEntry("sd15-depth", "sd", "lllyasviel/control_v11f1p_sd15_depth", "depth_midas", "SD 1.5 depth"),
        ControlNetEntry("sd15-openpose", "sd", "lllyasviel/control_v11p_sd15_openpose", "openpose", "SD 1.5 pose"),
        ControlNetEntry("sd15-softedge", "sd", "lllyasviel/control_v11p_sd15_softedge", "hed", "SD 1.5 soft edges"),
        ControlNetEntry("sd15-mlsd", "sd", "lllyasviel/control_v11p_sd15_mlsd", "mlsd", "SD 1.5 straight lines"),
        ControlNetEntry(
            "sd15-normal", "sd", "lllyasviel/control_v11p_sd15_normalbae", "normal_bae", "SD 1.5 normal map"
        ),
        ControlNetEntry("sdxl-canny", "sdxl", "diffusers/controlnet-canny-sdxl-1.0", "canny", "SDXL Canny edges"),
        ControlNetEntry("sdxl-depth", "sdxl", "diffusers/controlnet-depth-sdxl-1.0", "depth_midas", "SDXL depth"),
        ControlNetEntry("flux-canny", "flux", "InstantX/FLUX.1-dev-Controlnet-Canny", "canny", "FLUX.1 Canny edges"),
        ControlNetEntry(
            "flux-depth", "flux", "Shakker-Labs/FLUX.1-dev-ControlNet-Depth", "depth_midas", "FLUX.1 depth"
        ),
    )
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ControlNetNotFound(ValueError):
    """The name is neither listed nor a folder, file or hub id; the message says what is allowed."""


@dataclass(frozen=True)
class ControlNetSource:
    name: str
    kind: str  # folder | single_file | hub
    location: str


def resolve(name: str) -> ControlNetSource:
    """Where the ControlNet called ``name`` lives, without loading it."""
    location = REGISTRY[name].location if name in REGISTRY else name
    path = Path(location).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ControlNetNotFound(
                f"controlnet folder {name!r} has no config.json; it must be a diffusers ControlNet folder."
            )
        return ControlNetSource(name, "folder", str(path.resolve()))
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ControlNetNotFound(f"controlnet file {name!r} does not exist.")
        return ControlNetSource(name, "single_file", str(path.resolve()))
    if _HUB_ID.match(location) and not location.startswith(("/", ".")):
        return ControlNetSource(name, "hub", location)
    raise ControlNetNotFound(
        f"controlnet must be one of {', '.join(REGISTRY)}, a diffusers folder, a .safetensors file "
        f"or a hub id like 'org/name'; got {name!r}."
    )


def for_family(family: str) -> list[ControlNetEntry]:
    """The listed ControlNets made for a base family, for the tab's dropdown."""
    return [entry for entry in REGISTRY.values() if entry.family == family]
