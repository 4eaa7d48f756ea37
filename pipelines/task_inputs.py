"""Each task's inputs to the pipeline call, and what happens to each image after it.

- image-to-image: the init image, resized to the request's size by its
  ``resize_mode``;
- inpainting: the product mask grown or shrunk, and every output pasted back
  onto the original so the kept pixels stay exact (a VAE round trip would
  shift them); with matting, the mask's edge band composited over the new
  background with the product's matte, and its shadow drawn first;
- ControlNet: the control images made by the preprocessors (kept as derived
  images for the record), with an init image and a mask in its image-to-image
  and inpainting modes.

No torch here; the images are PIL's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipelines import masks, matting, preprocessors
from pipelines.errors import ModelError
from pipelines.images import resize_to
from pipelines.requests import ControlNetRequest, GenerationRequest, Img2ImgRequest, InpaintRequest
from pipelines.shadows import Shadow

# Inpainting through a ControlNet pastes back with this seam (its request has no feather field).
CONTROLNET_INPAINT_FEATHER = 4


@dataclass
class TaskInputs:
    """What a request adds to the pipeline call, and what happens to each image after it."""

    mode: str = "txt2img"
    prompts: list[str] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    controlnets: tuple[str, ...] = ()
    derived: list[tuple[str, Any]] = field(default_factory=list)
    finish: Callable[[Any], Any] = lambda image: image

    @classmethod
    def of(cls, request: GenerationRequest) -> TaskInputs:
        if isinstance(request, Img2ImgRequest):
            return cls._img2img(request)
        if isinstance(request, InpaintRequest):
            return cls._inpaint(request)
        if isinstance(request, ControlNetRequest):
            return cls._controlnet(request)
        return cls(prompts=[request.prompt])

    def add_reference(self, request: GenerationRequest) -> None:
        """The IP-Adapter's reference image, for a run that attached the adapter."""
        self.arguments["ip_adapter_image"] = _rgb(_pixels(request.ip_adapter_image, "ip_adapter_image"))

    def call_arguments(self, pipe: Any, request: GenerationRequest) -> dict[str, Any]:
        """The call's arguments in this pipeline's own names.

        FLUX's text-to-image ControlNet takes ``control_image`` where Stable
        Diffusion's takes ``image``, and FLUX's image-to-image needs the size that
        Stable Diffusion's takes from the image.
        """
        arguments = {**request.pipeline_arguments(), **self.arguments}
        accepted = inspect.signature(pipe.__call__).parameters
        if "image" in arguments and "image" not in accepted and "control_image" in accepted:
            arguments["control_image"] = arguments.pop("image")
        for name in ("height", "width"):
            if name in accepted and name not in arguments:
                arguments[name] = getattr(request, name)
        return arguments

    @classmethod
    def _img2img(cls, request: Img2ImgRequest) -> TaskInputs:
        image = resize_to(_rgb(_pixels(request.image, "image")), request.width, request.height, request.resize_mode)
        return cls(prompts=[request.prompt], arguments={"image": image})

    @classmethod
    def _inpaint(cls, request: InpaintRequest) -> TaskInputs:
        original = _pixels(request.image, "image")
        region = masks.adjust(_pixels(request.mask_image, "mask_image"), request.mask_grow)
        if request.matting:
            # The model paints under the whole edge band too, since the band is composited over it.
            matte = product_matte(request)
            region = masks.invert(Image.fromarray(np.where(matte.kept, 255, 0).astype(np.uint8), mode="L"))

            def finish(image: Image.Image) -> Image.Image:
                return matting.over(original, image, matte, shadow_of(request))

        else:

            def finish(image: Image.Image) -> Image.Image:
                return masks.paste_back(original, image, region, feather=request.mask_feather)

        size = (request.width, request.height)
        arguments = {
            "image": _rgb(original).resize(size, Image.Resampling.LANCZOS),
            "mask_image": region.resize(size, Image.Resampling.NEAREST),
        }
        return cls(mode="inpaint", prompts=request.prompts, arguments=arguments, finish=finish)

    @classmethod
    def _controlnet(cls, request: ControlNetRequest) -> TaskInputs:
        size = (request.width, request.height)
        controls = [
            resize_to(
                preprocessors.run(
                    unit.preprocessor, _rgb(_pixels(unit.image, "control image")), **unit.preprocessor_params
                ),
                *size,
                request.resize_mode,
            )
            for unit in request.controls
        ]
        single = len(controls) == 1
        control = controls[0] if single else controls
        arguments = request.pipeline_arguments()
        if single:  # one ControlNet takes plain numbers, several take lists
            overrides = {
                key: arguments[key][0]
                for key in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
            }
        else:
            overrides = {}
        task = cls(
            mode=request.mode,
            prompts=[request.prompt],
            controlnets=tuple(unit.controlnet for unit in request.controls),
            derived=[("control", image) for image in controls],
        )
        if request.mode == "txt2img":
            task.arguments = {"image": control, **overrides}
            return task
        original = _pixels(request.image, "image")
        task.arguments = {
            "image": resize_to(_rgb(original), *size, request.resize_mode),
            "control_image": control,
            **overrides,
        }
        if request.mode == "inpaint":
            region = _pixels(request.mask_image, "mask_image")
            task.arguments["mask_image"] = resize_to(region, *size, request.resize_mode)
            task.finish = lambda image: masks.paste_back(original, image, region, feather=CONTROLNET_INPAINT_FEATHER)
        return task


def product_matte(request: InpaintRequest) -> matting.Matte:
    """The product's matte for an inpainting request: its (grown or shrunk) mask's edge, matted."""
    return masks.product_matte(
        _pixels(request.image, "image"),
        _pixels(request.mask_image, "mask_image"),
        grow=request.mask_grow,
        band=request.matte_band,
    )


def shadow_of(request: InpaintRequest) -> Shadow | None:
    if request.shadow == "none":
        return None
    return Shadow(
        kind=request.shadow,
        angle=request.shadow_angle,
        distance=request.shadow_distance,
        softness=request.shadow_softness,
        opacity=request.shadow_opacity,
    )


def _pixels(ref, name: str) -> Any:
    if ref.image is None:
        raise ModelError(f"{name} has no pixels; a stored request needs its images from the gallery to run.")
    return ref.image


def _rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")
