"""Variation noise: near copies of a liked image, from a second seed blended into its starting noise.

A request's ``variation_seed`` and ``variation_strength`` ask for image i to
start from seed + i's noise moved towards variation_seed + i's. The blend is
spherical (slerp), as AUTOMATIC1111's variation seeds are: a straight
average of two Gaussian noises is quieter than either (half the variance
halfway), and the sampler expects noise of unit variance.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.requests import GenerationRequest


def variation_latents(pipe: Any, request: GenerationRequest) -> torch.Tensor:
    """Starting noise per image: seed + i's noise blended towards variation_seed + i's.

    Each noise is drawn as the pipeline would draw it (one CPU generator per
    image, the latent shape of one image; FLUX's then packed into its 2x2
    patches), so strength 0 is the seed's own image and strength 1 the
    variation seed's.
    """
    factor = pipe.vae_scale_factor
    flux = getattr(pipe, "transformer", None) is not None
    if flux:  # FLUX's latent sides are even: they are packed in 2x2 patches
        channels = pipe.transformer.config.in_channels // 4
        height, width = (2 * (side // (factor * 2)) for side in (request.height, request.width))
    else:
        channels = pipe.unet.config.in_channels
        height, width = request.height // factor, request.width // factor
    shape = (1, channels, height, width)

    def noise(seed: int) -> torch.Tensor:
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)

    blended = torch.cat(
        [
            _slerp(noise(seed), noise(other), request.variation_strength)
            for seed, other in zip(request.seeds, request.variation_seeds)
        ]
    )
    if flux:
        blended = pipe._pack_latents(blended, len(request.seeds), channels, height, width)
    denoiser = pipe.transformer if flux else pipe.unet
    return blended.to(pipe.device, denoiser.dtype)


def _slerp(low: torch.Tensor, high: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: the blend of two Gaussian noises stays as loud as each of them.

    The ends are the noises themselves, not the formula at 0 or 1: sin(omega) / sin(omega)
    rounds to a hair off 1 on some CPUs, and strength 0 and 1 promise those seeds' images.
    """
    if t == 0:
        return low.clone()
    if t == 1:
        return high.clone()
    a, b = low.flatten(), high.flatten()
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * low + t * high
    return (torch.sin((1 - t) * omega) * low + torch.sin(t * omega) * high) / torch.sin(omega)
