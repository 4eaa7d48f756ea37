"""A model source becomes a loaded pipeline: the right diffusers class, its family, its revision.

- a diffusers folder (the embedded model is one) loads as text-to-image, as
  inpainting when its UNet takes 9 channels, as image-to-image when it is an
  SDXL refiner;
- a single checkpoint file has no config, so its keys say what it is (SDXL,
  refiner, inpainting) before diffusers converts it;
- a hub id loads from its cached snapshot, whose folder name is the commit;
- a ControlNet likewise, as ``ControlNetModel`` or ``FluxControlNetModel``
  by its config, and ``controlnet_fits`` says whether it can join a base.

The engine keeps what these return (``LoadedModel``, ``LoadedControlNet``)
and derives every task's pipeline from the base.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    DiffusionPipeline,
    FluxControlNetModel,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from pipelines import controlnets
from pipelines.devices import Switches
from pipelines.errors import ModelError
from pipelines.previews import LatentPreviewer, watch
from pipelines.sources import ModelSource, file_revision, folder_revision


@dataclass
class LoadedModel:
    source: ModelSource
    revision: str  # hub commit, or sha256 of the weight files
    family: str  # sd | sdxl | flux
    base: DiffusionPipeline  # what every task's pipeline is derived from
    inpainting_only: bool = False  # a 9-channel UNet: only the inpainting tasks can use it
    refiner_only: bool = False  # an SDXL refiner (one text encoder): it only finishes another model's images
    pipelines: dict[tuple, DiffusionPipeline] = field(default_factory=dict)
    previewer: LatentPreviewer | None = None  # made on the first run that asks for previews

    def previews(self, pipe: DiffusionPipeline, preview: Callable[[Any], None] | None):
        """A maker of per-run preview callbacks for ``pipe``'s scheduler, or None when nobody watches."""
        if preview is None:
            return None
        if self.previewer is None:
            self.previewer = LatentPreviewer.for_pipeline(self.base)
        return watch(self.previewer, pipe.scheduler, preview)


@dataclass
class LoadedControlNet:
    source: controlnets.ControlNetSource
    revision: str
    model: ControlNetModel


def load_model(source: ModelSource, *, dtype: torch.dtype, device: torch.device, switches: Switches) -> LoadedModel:
    """``source``'s base pipeline on ``device`` with ``switches``, with its revision and family."""
    options = {"dtype": dtype}
    try:
        if source.kind == "single_file":
            path = Path(source.location)
            pipe = _single_file_class(path).from_single_file(str(path), **options)
            revision = file_revision(path)
        elif source.kind == "hub":
            # download() returns the cached snapshot folder, named by its commit.
            folder = Path(DiffusionPipeline.download(source.location))
            pipe = _from_folder(folder, options)
            revision = folder.name
        else:  # a diffusers folder; the embedded model is one
            folder = Path(source.location)
            pipe = _from_folder(folder, options)
            revision = folder_revision(folder)
    except ModelError:
        raise
    except (OSError, ValueError) as error:
        raise ModelError(f"model {source.name!r} could not be loaded: {error}") from error
    family = _family(pipe)
    switches.apply(pipe, family, device)
    pipe.set_progress_bar_config(disable=True)
    inpainting_only = family != "flux" and pipe.unet.config.in_channels == 9
    refiner_only = family == "sdxl" and pipe.text_encoder is None
    return LoadedModel(
        source=source,
        revision=revision,
        family=family,
        base=pipe,
        inpainting_only=inpainting_only,
        refiner_only=refiner_only,
    )


def load_controlnet(name: str, *, dtype: torch.dtype, device: torch.device) -> LoadedControlNet:
    """The ControlNet called ``name`` (listed, a folder, a file or a hub id) on ``device``."""
    try:
        source = controlnets.resolve(name)
        if source.kind == "single_file":
            path = Path(source.location)
            model = ControlNetModel.from_single_file(str(path), dtype=dtype)
            revision = file_revision(path)
        else:
            if source.kind == "hub":
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(source.location, allow_patterns=["*.json", "*.safetensors"]))
                revision = folder.name
            else:
                folder = Path(source.location)
                revision = folder_revision(folder)
            model = _controlnet_class(folder).from_pretrained(str(folder), dtype=dtype)
    except controlnets.ControlNetNotFound as error:
        raise ModelError(str(error)) from error
    except (OSError, ValueError) as error:
        raise ModelError(f"controlnet {name!r} could not be loaded: {error}") from error
    return LoadedControlNet(source=source, revision=revision, model=model.to(device))


def controlnet_fits(control: LoadedControlNet, loaded: LoadedModel) -> bool:
    """Whether the ControlNet can join the base: its residuals are added to the denoiser's, so its widths must be the base's."""
    ours = control.model.config
    if loaded.family == "flux":
        base = loaded.base.transformer.config
        return isinstance(control.model, FluxControlNetModel) and (ours.joint_attention_dim, ours.in_channels) == (
            base.joint_attention_dim,
            base.in_channels,
        )
    base = loaded.base.unet.config
    return (
        isinstance(control.model, ControlNetModel)
        and ours.cross_attention_dim == base.cross_attention_dim
        and (tuple(ours.block_out_channels) == tuple(base.block_out_channels))
    )


def _family(pipe: DiffusionPipeline) -> str:
    if isinstance(pipe, (FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline)):
        return "flux"
    if isinstance(
        pipe, (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline)
    ):
        return "sdxl"
    if isinstance(pipe, (StableDiffusionPipeline, StableDiffusionInpaintPipeline)):
        return "sd"
    raise ModelError(
        f"{type(pipe).__name__} models are not supported yet; use a Stable Diffusion 1.x/2.x, SDXL or FLUX model."
    )


def _single_file_class(path: Path) -> type[DiffusionPipeline]:
    """SDXL checkpoints carry a second text encoder under ``conditioner.embedders.1``; the SDXL
    refiner's only encoder is ``conditioner.embedders.0`` (SD 2.x's is ``cond_stage_model``);
    inpainting checkpoints have a UNet whose first convolution takes 9 channels."""
    xl = inpaint = refiner = False
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            xl = any(key.startswith("conditioner.embedders.1.") for key in keys)
            refiner = not xl and any(key.startswith("conditioner.embedders.0.") for key in keys)
            first = "model.diffusion_model.input_blocks.0.0.weight"
            inpaint = first in keys and handle.get_slice(first).get_shape()[1] == 9
    if inpaint:
        return StableDiffusionXLInpaintPipeline if xl else StableDiffusionInpaintPipeline
    if refiner:
        return StableDiffusionXLImg2ImgPipeline
    return StableDiffusionXLPipeline if xl else StableDiffusionPipeline


def _from_folder(folder: Path, options: dict[str, Any]) -> DiffusionPipeline:
    """A diffusers folder as its base pipeline: text-to-image, inpainting for a 9-channel model,
    image-to-image for an SDXL refiner (its class keeps the refiner's aesthetic-score conditioning)."""
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") == StableDiffusionXLImg2ImgPipeline.__name__:
        return StableDiffusionXLImg2ImgPipeline.from_pretrained(str(folder), **options)
    auto = AutoPipelineForInpainting if _is_inpainting_folder(folder) else AutoPipelineForText2Image
    return auto.from_pretrained(str(folder), **options)


def _is_inpainting_folder(folder: Path) -> bool:
    """A dedicated inpainting model: its UNet sees the noisy latents, the mask and the masked image (4 + 1 + 4)."""
    config = folder / "unet" / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("in_channels") == 9


def _controlnet_class(folder: Path) -> type:
    """ControlNetModel or FluxControlNetModel, as the folder's config says."""
    config = folder / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    return FluxControlNetModel if name == "FluxControlNetModel" else ControlNetModel
