"""Request types: one frozen, validated dataclass per task.

Field names are diffusers' own ``__call__`` argument names (``prompt``,
``num_inference_steps``, ``guidance_scale`` ...) so a request maps onto a
pipeline call without renaming. ``to_dict()`` is what the gallery stores and
``request_from_dict()`` is how a rerun gets the request back.

This module imports neither torch nor diffusers: the UI and the CLI validate
input with it before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from pipelines import preprocessors
from pipelines.checks import check_fraction, check_int, check_loras, check_text, check_word
from pipelines.images import output_size

# The UI and the CLI import the limits from here too, beside the requests they bound.
from pipelines.limits import (
    DEFAULT_MATTE_BAND,
    MAX_BATCH,
    MAX_GUIDANCE,
    MAX_MATTE_BAND,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SHADOW_PIXELS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    SEED_RANGE_32,
    SHADOW_KINDS,
    RequestError,
    names_of,
    seed_plus,
)
from pipelines.samplers import SAMPLER_NAMES


def random_seed() -> int:
    """A seed for "surprise me"; recorded like any other, so it can be reused.

    Drawn below 2**32 although seeds go to 2**64 - 1: torch's CPU generator,
    which draws every image's noise, seeds itself from a seed's low 32 bits
    (as ComfyUI's noise does too), so a wider draw would make no new images,
    and a 32-bit seed can be typed into every other tool.
    """
    return secrets.randbelow(SEED_RANGE_32)


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """Fields every task shares. Subclasses add their inputs and set ``task``."""

    task: ClassVar[str]

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_inference_steps: int = 20
    guidance_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "DPM++ 2M"
    batch_size: int = 1
    model: str = "embedded"
    # A second seed's noise blended in (spherically): near copies of a liked image.
    variation_seed: int | None = None
    variation_strength: float = 0.0
    # A reference image whose style or composition an IP-Adapter carries over.
    ip_adapter_image: ImageRef | None = None
    ip_adapter_scale: float = 0.6
    # LoRA files from the studio's LoRA folder, by name, each with its weight.
    loras: tuple[tuple[str, float], ...] = ()
    # An SDXL refiner model (same kinds of source as ``model``) that takes over the last steps:
    # the base denoises until ``refiner_switch`` of the schedule, the refiner finishes.
    refiner: str | None = None
    refiner_switch: float = 0.8

    def __post_init__(self) -> None:
        # 1. Text
        check_text("prompt", self.prompt, required=True)
        check_text("negative_prompt", self.negative_prompt, required=False)
        # 2. Numbers
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        check_int("width", self.width, MIN_SIZE, MAX_SIZE, multiple=8)
        check_int("height", self.height, MIN_SIZE, MAX_SIZE, multiple=8)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= MAX_GUIDANCE:
            raise RequestError(f"guidance_scale must be a number from 0 to {MAX_GUIDANCE:g}; got {guidance!r}.")
        # An int guidance would not survive a JSON round trip as the same type.
        object.__setattr__(self, "guidance_scale", float(guidance))
        _check_image("ip_adapter_image", self.ip_adapter_image, required=False)
        object.__setattr__(self, "loras", check_loras(self.loras))
        object.__setattr__(
            self, "ip_adapter_scale", check_fraction("ip_adapter_scale", self.ip_adapter_scale, 0.0, 2.0)
        )
        if self.variation_seed is not None:
            check_int("variation_seed", self.variation_seed, 0, MAX_SEED)
        object.__setattr__(self, "variation_strength", check_fraction("variation_strength", self.variation_strength))
        if self.variation_strength > 0 and self.variation_seed is None:
            raise RequestError("variation_strength needs a variation_seed; give one or set the strength to 0.")
        # 3. Names
        if self.sampler not in SAMPLER_NAMES:
            raise RequestError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}; got {self.sampler!r}.")
        if not isinstance(self.model, str) or not self.model.strip():
            raise RequestError("model must name a model: 'embedded', a folder, a .safetensors file or a hub id.")
        if self.variation_strength > 0 and not self.VARIATIONS:
            raise RequestError(
                f"variation_seed applies to text-to-image and ControlNet; {self.task} starts from its image."
            )
        if self.refiner is not None:
            if not isinstance(self.refiner, str) or not self.refiner.strip() or len(self.refiner) > MAX_PROMPT_CHARS:
                raise RequestError(
                    "refiner must name an SDXL refiner model: a folder, a .safetensors file or a hub id."
                )
            if not self.REFINES:
                raise RequestError(f"refiner applies to text-to-image and image-to-image; remove it for {self.task}.")
        switch = self.refiner_switch
        if isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0 < switch < 1:
            raise RequestError(
                f"refiner_switch must be a number between 0 and 1 (the base's share of the steps); got {switch!r}."
            )
        object.__setattr__(self, "refiner_switch", float(switch))

    @property
    def seeds(self) -> list[int]:
        """Image i of a batch uses seed + i, so any image can be remade alone."""
        return [seed_plus(self.seed, i) for i in range(self.batch_size)]

    @property
    def variation_seeds(self) -> list[int] | None:
        """Image i blends in variation_seed + i; None when there is no variation."""
        if self.variation_seed is None or self.variation_strength == 0:
            return None
        return [seed_plus(self.variation_seed, i) for i in range(self.batch_size)]

    # Tasks whose starting noise the engine can blend (a pure-noise start).
    VARIATIONS: ClassVar[bool] = True
    # Tasks an SDXL refiner can finish (its base hands over latents, not pasted-back pixels).
    REFINES: ClassVar[bool] = True

    def pipeline_arguments(self) -> dict[str, Any]:
        """The diffusers ``__call__`` arguments this request sets directly.

        Prompts go through the engine's embedding cache and seeds become
        generators, so neither is here.
        """
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "width": self.width,
            "height": self.height,
            "num_images_per_prompt": self.batch_size,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; an input image is its pixel hash (the gallery keeps the pixels)."""
        return {"task": self.task, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], images: Mapping[str, Image.Image] | None = None) -> GenerationRequest:
        """The request ``to_dict`` described; ``images`` maps pixel hashes back to the stored inputs."""
        if not isinstance(data, dict):
            raise RequestError(f"a stored request must be an object; got {type(data).__name__}.")
        data = dict(data)
        task = data.pop("task", cls.task)
        if task != cls.task:
            raise RequestError(f"task must be {cls.task!r} for {cls.__name__}; got {task!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise RequestError(f"{cls.__name__} has no field {names_of(unknown)}; allowed: {', '.join(sorted(known))}.")
        for name in cls.IMAGE_FIELDS:
            if name in data and data[name] is not None:
                data[name] = ImageRef.from_stored(name, data[name], images)
        if "controls" in known and "controls" in data:
            data["controls"] = ControlUnit.from_stored(data["controls"], images)
        return cls(**data)

    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("ip_adapter_image",)

    @property
    def input_images(self) -> list[tuple[str, ImageRef]]:
        """(role, image) of every input, in the order the gallery stores them."""
        return self._task_inputs() + (
            [("reference", self.ip_adapter_image)] if self.ip_adapter_image is not None else []
        )

    def _task_inputs(self) -> list[tuple[str, ImageRef]]:
        return []

    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Text2ImgRequest(GenerationRequest):
    task: ClassVar[str] = "txt2img"


# -- input images ------------------------------------------------------------------


def pixel_hash(image: Image.Image) -> str:
    """The identity of an input: its mode, size and pixels (not how the file was encoded)."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class ImageRef:
    """An input image with its pixel hash.

    A stored request keeps only the hash; the gallery keeps the pixels, and a
    rerun hands them back through ``from_dict(..., images=...)``. Two refs
    are equal when their pixels are.
    """

    sha256: str
    image: Image.Image | None = field(default=None, repr=False)

    @classmethod
    def of(cls, image: Image.Image) -> ImageRef:
        image.load()
        return cls(pixel_hash(image), image)

    @classmethod
    def from_stored(cls, name: str, value: Any, images: Mapping[str, Image.Image] | None) -> ImageRef:
        if isinstance(value, ImageRef):
            return value
        if not isinstance(value, str) or len(value) != 64:
            raise RequestError(f"{name} must be an image; got {type(value).__name__}.")
        if images is None:
            return cls(value)
        if value not in images:
            raise RequestError(f"{name} ({value[:12]}) is no longer in the gallery, so this request cannot run again.")
        return cls(value, images[value])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageRef) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.image is None else self.image.size


def _plain(value: Any) -> Any:
    if isinstance(value, ImageRef):
        return value.sha256
    if isinstance(value, ControlUnit):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_image(name: str, value: Any, *, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, ImageRef):
        raise RequestError(f"{name} must be an image; got {type(value).__name__}.")


def _size_from(request: GenerationRequest, image: ImageRef) -> None:
    """Width and height 0 mean "the input's own size", rounded to what the model allows."""
    if request.width == 0 and request.height == 0 and image.image is not None:
        width, height = output_size(image.image)
        object.__setattr__(request, "width", width)
        object.__setattr__(request, "height", height)


RESIZE_MODES = ("fit", "crop", "pad")
MAX_MASK_PIXELS = 256  # grow, shrink and feather, in pixels
MAX_CONTROLS = 3


@dataclass(frozen=True, kw_only=True)
class Img2ImgRequest(GenerationRequest):
    """Start from an image: ``strength`` 0 keeps it, 1 replaces it."""

    task: ClassVar[str] = "img2img"
    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("image", "ip_adapter_image")

    image: ImageRef
    strength: float = 0.75
    resize_mode: str = "fit"  # for an image of another size than width x height: fit, crop or pad
    width: int = 0
    height: int = 0
    VARIATIONS: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_image("image", self.image)
        _size_from(self, self.image)
        super().__post_init__()
        object.__setattr__(self, "strength", check_fraction("strength", self.strength, open_low=True))
        check_word("resize_mode", self.resize_mode, RESIZE_MODES)

    def pipeline_arguments(self) -> dict[str, Any]:
        arguments = super().pipeline_arguments()
        del arguments["width"], arguments["height"]  # the (resized) image sets the size
        return {**arguments, "strength": self.strength}

    def _task_inputs(self) -> list[tuple[str, ImageRef]]:
        return [("input", self.image)]


MASK_SOURCES = ("upload", "editor", "alpha", "grabcut", "rembg")


@dataclass(frozen=True, kw_only=True)
class InpaintRequest(GenerationRequest):
    """Regenerate the white part of ``mask_image``; every other pixel is the original's, exactly.

    One prompt per line makes one image per line, all with the same mask
    and seed: a campaign's backgrounds in one run.
    """

    task: ClassVar[str] = "inpaint"
    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("image", "mask_image", "ip_adapter_image")

    image: ImageRef
    mask_image: ImageRef  # mode L, same size as image, white = regenerate
    strength: float = 1.0
    mask_grow: int = 0  # pixels; the regenerated region grows into the product (>0) or keeps a margin (<0)
    mask_feather: int = 4  # pixels of soft seam, inside the regenerated region only
    padding_mask_crop: int | None = None  # inpaint only the masked area plus this margin, at full resolution
    mask_source: str = "upload"  # how the mask was made, for the record
    width: int = 0
    height: int = 0
    # Issue 20: the mask's edge band is matted and composited again over the new background
    # (mask_feather then has no say); off, kept pixels are pasted back with the mask's hard edge.
    matting: bool = True
    matte_band: int = DEFAULT_MATTE_BAND  # pixels of unknown band on each side of the mask's edge
    shadow: str = "none"  # a grounded shadow from the product's silhouette: none, drop or contact
    shadow_angle: float = 90.0  # degrees it falls towards, clockwise from the right: 90 = straight down
    shadow_distance: int = 12  # pixels
    shadow_softness: int = 12  # pixels
    shadow_opacity: float = 0.5
    VARIATIONS: ClassVar[bool] = False
    REFINES: ClassVar[bool] = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], images: Mapping[str, Image.Image] | None = None) -> GenerationRequest:
        """As for every task; a record from before matting existed pasted back without it, and reruns so."""
        if isinstance(data, dict) and "matting" not in data:
            data = {**data, "matting": False}
        return super().from_dict(data, images)

    def __post_init__(self) -> None:
        _check_image("image", self.image)
        _check_image("mask_image", self.mask_image)
        _size_from(self, self.image)
        super().__post_init__()
        prompts = self.prompts
        if len(prompts) * self.batch_size > MAX_BATCH:
            raise RequestError(
                f"prompt must have at most {MAX_BATCH // self.batch_size} lines at batch size {self.batch_size}; "
                f"got {len(prompts)}."
            )
        object.__setattr__(self, "strength", check_fraction("strength", self.strength, open_low=True))
        check_int("mask_grow", self.mask_grow, -MAX_MASK_PIXELS, MAX_MASK_PIXELS)
        check_int("mask_feather", self.mask_feather, 0, MAX_MASK_PIXELS)
        if self.padding_mask_crop is not None:
            check_int("padding_mask_crop", self.padding_mask_crop, 0, MAX_SIZE)
        check_word("mask_source", self.mask_source, MASK_SOURCES)
        if not isinstance(self.matting, bool):
            raise RequestError(f"matting must be true or false; got {self.matting!r}.")
        check_int("matte_band", self.matte_band, 1, MAX_MATTE_BAND)
        check_word("shadow", self.shadow, SHADOW_KINDS)
        object.__setattr__(self, "shadow_angle", check_fraction("shadow_angle", self.shadow_angle, -360.0, 360.0))
        check_int("shadow_distance", self.shadow_distance, 0, MAX_SHADOW_PIXELS)
        check_int("shadow_softness", self.shadow_softness, 0, MAX_SHADOW_PIXELS)
        object.__setattr__(self, "shadow_opacity", check_fraction("shadow_opacity", self.shadow_opacity))
        if self.shadow != "none" and not self.matting:
            raise RequestError("shadow needs matting, which gives the silhouette it is cast from; turn matting on.")
        image, mask = self.image.image, self.mask_image.image
        if image is not None and mask is not None:
            if mask.size != image.size:
                raise RequestError(
                    f"mask_image must be the size of image ({image.width}x{image.height}); got {mask.width}x{mask.height}."
                )
            if mask.mode != "L":
                raise RequestError(f"mask_image must be a greyscale (L) mask; got mode {mask.mode}.")

    @property
    def prompts(self) -> list[str]:
        return [line.strip() for line in self.prompt.splitlines() if line.strip()]

    @property
    def seeds(self) -> list[int]:
        """The same seeds for every prompt line, so only the background's words differ."""
        return super().seeds * len(self.prompts)

    def pipeline_arguments(self) -> dict[str, Any]:
        arguments = super().pipeline_arguments()
        arguments["strength"] = self.strength
        if self.padding_mask_crop:
            arguments["padding_mask_crop"] = self.padding_mask_crop
        return arguments

    def _task_inputs(self) -> list[tuple[str, ImageRef]]:
        return [("input", self.image), ("mask", self.mask_image)]


@dataclass(frozen=True, kw_only=True)
class ControlUnit:
    """One ControlNet: its model, the source image, the preprocessor that turns it into a control image, and how hard it steers."""

    image: ImageRef
    controlnet: str = "embedded-canny"  # a registry name, a folder, a .safetensors file or a hub id
    preprocessor: str = "canny"
    preprocessor_params: dict[str, Any] = field(default_factory=dict)
    conditioning_scale: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0

    def __post_init__(self) -> None:
        _check_image("control image", self.image)
        if not isinstance(self.controlnet, str) or not self.controlnet.strip():
            raise RequestError("controlnet must name a ControlNet model; see the ControlNet tab's list.")
        if not isinstance(self.preprocessor, str) or self.preprocessor not in preprocessors.PREPROCESSORS:
            raise RequestError(
                f"preprocessor must be one of {', '.join(preprocessors.PREPROCESSORS)}; got {self.preprocessor!r}."
            )
        if not isinstance(self.preprocessor_params, dict):
            raise RequestError(f"preprocessor_params must be an object; got {type(self.preprocessor_params).__name__}.")
        if not all(isinstance(key, str) for key in self.preprocessor_params):
            keys = list(self.preprocessor_params)
            raise RequestError(f"preprocessor_params must name each parameter in text; got {keys!r:.80}.")
        params = preprocessors.check_params(self.preprocessor, **self.preprocessor_params)
        object.__setattr__(self, "preprocessor_params", params)
        scale = check_fraction("controlnet_conditioning_scale", self.conditioning_scale, 0.0, 2.0)
        start = check_fraction("control_guidance_start", self.guidance_start)
        end = check_fraction("control_guidance_end", self.guidance_end)
        if start >= end:
            raise RequestError(f"control_guidance_start must be below control_guidance_end; got {start:g} and {end:g}.")
        object.__setattr__(self, "conditioning_scale", scale)
        object.__setattr__(self, "guidance_start", start)
        object.__setattr__(self, "guidance_end", end)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_stored(cls, value: Any, images: Mapping[str, Image.Image] | None) -> tuple[ControlUnit, ...]:
        if not isinstance(value, (list, tuple)):
            raise RequestError(f"controls must be a list of ControlNets; got {type(value).__name__}.")
        units = []
        for item in value:
            if isinstance(item, ControlUnit):
                units.append(item)
                continue
            if not isinstance(item, dict):
                raise RequestError(f"controls must hold objects; got {type(item).__name__}.")
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(item) - known, key=str)
            if unknown:
                raise RequestError(f"a control has no field {names_of(unknown)}; allowed: {', '.join(sorted(known))}.")
            item = dict(item)
            item["image"] = ImageRef.from_stored("control image", item.get("image"), images)
            units.append(cls(**item))
        return tuple(units)


@dataclass(frozen=True, kw_only=True)
class ControlNetRequest(GenerationRequest):
    """Text-to-image steered by one to three ControlNets; with ``image`` it starts from it
    (strength applies), and with ``mask_image`` too it regenerates only the mask's white part."""

    task: ClassVar[str] = "controlnet"
    IMAGE_FIELDS: ClassVar[tuple[str, ...]] = ("image", "mask_image", "ip_adapter_image")

    controls: tuple[ControlUnit, ...]
    image: ImageRef | None = None
    mask_image: ImageRef | None = None
    strength: float = 0.75
    resize_mode: str = "fit"
    width: int = 0
    height: int = 0
    REFINES: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.controls, list):
            object.__setattr__(self, "controls", tuple(self.controls))
        if not isinstance(self.controls, tuple) or not 1 <= len(self.controls) <= MAX_CONTROLS:
            raise RequestError(f"controls must hold 1 to {MAX_CONTROLS} ControlNets; got {self.controls!r:.60}.")
        if not all(isinstance(unit, ControlUnit) for unit in self.controls):
            raise RequestError("controls must hold ControlNet settings (ControlUnit).")
        _check_image("image", self.image, required=False)
        _check_image("mask_image", self.mask_image, required=False)
        if self.mask_image is not None and self.image is None:
            raise RequestError("mask_image needs an image to inpaint; add the image or remove the mask.")
        _size_from(self, self.image or self.controls[0].image)
        super().__post_init__()
        object.__setattr__(self, "strength", check_fraction("strength", self.strength, open_low=True))
        check_word("resize_mode", self.resize_mode, RESIZE_MODES)
        if self.variation_strength > 0 and self.image is not None:
            raise RequestError(
                "variation_seed applies to ControlNet without an init image; remove the image or the variation."
            )

    @property
    def mode(self) -> str:
        """Which diffusers pipeline: txt2img, img2img or inpaint, each with ControlNet."""
        return "inpaint" if self.mask_image is not None else "img2img" if self.image is not None else "txt2img"

    def pipeline_arguments(self) -> dict[str, Any]:
        arguments = super().pipeline_arguments()
        arguments["controlnet_conditioning_scale"] = [unit.conditioning_scale for unit in self.controls]
        arguments["control_guidance_start"] = [unit.guidance_start for unit in self.controls]
        arguments["control_guidance_end"] = [unit.guidance_end for unit in self.controls]
        if self.mode != "txt2img":
            arguments["strength"] = self.strength
        return arguments

    def _task_inputs(self) -> list[tuple[str, ImageRef]]:
        inputs = [("input", self.image)] if self.image is not None else []
        if self.mask_image is not None:
            inputs.append(("mask", self.mask_image))
        return inputs + [("control_source", unit.image) for unit in self.controls]


REQUEST_TYPES: dict[str, type[GenerationRequest]] = {
    cls.task: cls for cls in (Text2ImgRequest, Img2ImgRequest, InpaintRequest, ControlNetRequest)
}


def request_from_dict(data: dict[str, Any], images: Mapping[str, Image.Image] | None = None) -> GenerationRequest:
    """The request a stored ``to_dict()`` describes, whatever its task."""
    if not isinstance(data, dict):
        raise RequestError(f"a stored request must be an object; got {type(data).__name__}.")
    task = data.get("task")
    if not isinstance(task, str) or task not in REQUEST_TYPES:
        raise RequestError(f"task must be one of {', '.join(REQUEST_TYPES)}; got {task!r}.")
    return REQUEST_TYPES[task].from_dict(data, images)
