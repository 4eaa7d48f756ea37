"""The SDXL refiner hand-over: the base denoises until ``refiner_switch``, the refiner finishes.

The base runs with ``denoising_end=refiner_switch`` and hands over its
latents, not pixels (diffusers' "ensemble of expert denoisers"); the
refiner's image-to-image pipeline runs from
``denoising_start=refiner_switch`` with the same generators, so a seed still
means one picture. ``Stages`` makes one progress bar of the two.

The engine loads the refiner as a resident model beside the base and picks
its pipeline; this module runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipelines import ip_adapter, lora
from pipelines.devices import Switches
from pipelines.loaders import LoadedModel
from pipelines.progress import CancelToken, ProgressFn, on_step_end
from pipelines.prompt_cache import TextEmbeddingCache
from pipelines.requests import GenerationRequest
from pipelines.samplers import make_scheduler


class Stages:
    """One progress bar over a base and its refiner: the refiner's steps continue the base's.

    Both denoise parts of one schedule: text-to-image's ``num_inference_steps``
    steps, image-to-image's share of them for its strength (diffusers' count).
    """

    def __init__(self, request: GenerationRequest, progress: ProgressFn | None) -> None:
        steps = request.num_inference_steps
        strength = getattr(request, "strength", None)
        self.total = steps if strength is None else max(1, min(int(steps * strength), steps))
        self.progress = progress
        self.done_by_base = 0

    def base(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(min(done, self.total), self.total)

    def handed_over(self, base_steps: int) -> None:
        self.done_by_base = base_steps

    def refiner(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.total = max(self.total, self.done_by_base + total)
            self.progress(self.done_by_base + done, self.total)


def refine(
    loaded: LoadedModel,
    pipe: Any,
    request: GenerationRequest,
    prompt: str,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    *,
    stages: Stages,
    cancel: CancelToken | None,
    preview: Callable[[Any], None] | None,
    switches: Switches,
    text_cache: TextEmbeddingCache,
    device: torch.device,
) -> list[Any]:
    """Finish the base's latents with the refiner (``loaded``, its image-to-image ``pipe``) from ``refiner_switch`` on."""
    # The LoRAs and the reference image are the base's: a model used as a refiner runs as itself,
    # whatever an earlier run of it as a base left attached.
    lora.clear(pipe)
    ip_adapter.detach(pipe)
    pipe.scheduler = make_scheduler(request.sampler, loaded.base.scheduler.config)
    switches.tile_vae(pipe.vae, request.width * request.height)
    previews = loaded.previews(pipe, preview)
    cfg = request.guidance_scale > 1
    output = pipe(
        **text_cache.embeds(
            pipe,
            loaded.family,
            (loaded.source.name, loaded.revision),
            prompt,
            request.negative_prompt,
            cfg=cfg,
            device=device,
        ),
        image=latents,
        num_inference_steps=request.num_inference_steps,
        denoising_start=request.refiner_switch,
        guidance_scale=request.guidance_scale,
        num_images_per_prompt=request.batch_size,
        generator=generators,
        callback_on_step_end=on_step_end(
            stages.refiner,
            cancel,
            0,
            1,
            request.num_inference_steps,
            previews((request.width, request.height)) if previews else None,
        ),
        output_type="pil",
    )
    return output.images
