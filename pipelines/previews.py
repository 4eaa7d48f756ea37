"""Live previews during sampling: the latents as a small RGB picture, cheaply.

Three ways; ``LatentPreviewer.for_pipeline`` picks the first that fits:

1. TAESD (``madebyollin/taesd`` for SD1.x/2.x latents, ``madebyollin/taesdxl``
   for SDXL's), a tiny distilled decoder, loaded through diffusers'
   ``AutoencoderTiny`` only when its weights are already in the local Hugging
   Face cache: a preview never downloads anything. It was distilled for those
   two latent spaces, so it is used only when the model's VAE has their
   scaling factor (0.18215 or 0.13025).
2. The model's own VAE, when its decoder is small (the embedded model's has
   0.4M parameters: one 64x64 decode costs about an eighth of a UNet step on
   a CPU). Exact, and the only good option for such a VAE: its latent space
   is far from linear (below).
3. A linear map, fitted once per model: each latent pixel (4 channels, as the
   sampler sees them, i.e. scaled by the VAE's ``scaling_factor``) times a
   4x3 matrix plus a bias gives the mean RGB of the patch the VAE decodes it
   to. The well-known "latent to RGB factors" for SD1.5 and SDXL are such a
   map, published, and recognisable previews in other studios show those
   latent spaces are close enough to linear; fitting by least squares from
   encode/decode round trips of synthetic pictures (flat colours, shapes,
   gradients) gives the same kind of map for any VAE without a table. For
   the embedded model's VAE it does not work: residual 0.39 (in -1..1 units),
   35/255 mean error on its own final latents, green backgrounds read as
   purple; quadratic terms, 5x5 neighbourhoods or fitting on the sampled
   latents themselves stay above 22/255, because its decoder (with
   mid-block attention) mixes the whole latent.

Previews show the sampler's estimate of the finished picture (x0), not the
noisy latents of the current step (see ``DenoisedTap``): early on x_t is
mostly noise, and for Euler-type samplers it is scaled up by sigma as well.

What a preview costs depends on the VAE and the device (the embedded
model's VAE decode is about a third of a UNet step on one CPU thread), so
``PreviewPacer`` keeps previews every few steps *and* within 4% of the
run's time, whatever they cost.

Nothing here changes the pipeline's modules; ``DenoisedTap`` wraps the
``step`` of the one scheduler a run uses.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from PIL import Image

# TAESD's decoders were distilled for exactly these latent spaces, which the
# VAE's scaling factor identifies.
TAESD_REPOS = {0.18215: "madebyollin/taesd", 0.13025: "madebyollin/taesdxl"}
_TAESD_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
FIT_IMAGES = 24
FIT_LATENT_SIDE = 8  # latents per side of each fitting picture
# A VAE decoder up to this size decodes a preview in a few milliseconds
# (the embedded model's: 0.4M); SD's and SDXL's have 49M.
SMALL_DECODER_PARAMETERS = 5_000_000
METHODS = ("auto", "taesd", "vae", "linear")
EVERY_STEPS = 5
# Issue 6 allows previews 5% of a generation's time; aiming at 4% leaves
# room for what the pacer does not time (the x0 tap, the callback itself).
BUDGET = 0.04

T = TypeVar("T")


@dataclass(frozen=True)
class LinearMap:
    """latent channels -> RGB in [-1, 1]: ``rgb = latent @ weight + bias`` per latent pixel."""

    weight: torch.Tensor  # (latent_channels, 3), float32, CPU
    bias: torch.Tensor  # (3,)
    rms_error: float  # of the fit, in [-1, 1] units over the fitting pictures' patches


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent along a side: the VAE halves the size at every block but the last."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def fit_linear(vae: Any, *, images: int = FIT_IMAGES, seed: int = 0) -> LinearMap:
    """Least-squares latent->RGB map for ``vae`` from round trips of synthetic pictures."""
    factor = vae_scale_factor(vae)
    pixels = _fitting_pictures(images, FIT_LATENT_SIDE * factor, seed)
    parameter = next(vae.parameters())
    # fp16 VAEs overflow in places (SDXL's decoder, hence its force_upcast);
    # a float32 copy for these few decodes leaves the shared one untouched.
    model = vae if parameter.dtype == torch.float32 else copy.deepcopy(vae).float()
    config = vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    with torch.no_grad():
        latents = model.encode(pixels.to(parameter.device)).latent_dist.mode()
        decoded = model.decode(latents).sample.float().clamp(-1, 1)
    # 1. What the sampler sees (the pipeline divides by scaling_factor before decoding)
    scaled = (latents.float() - shift) * config.scaling_factor
    # 2. What each latent pixel decodes to, on average
    target = F.avg_pool2d(decoded, factor)
    x = scaled.permute(0, 2, 3, 1).reshape(-1, scaled.shape[1]).double().cpu()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).double().cpu()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    rms = float(((design @ solution - y) ** 2).mean().sqrt())
    return LinearMap(weight=solution[:-1].float(), bias=solution[-1].float(), rms_error=rms)


def _fitting_pictures(count: int, side: int, seed: int) -> torch.Tensor:
    """Flat colours, a shape of one colour on another, and two-colour gradients, in [-1, 1].

    Flat regions pin the colours; shapes and gradients add the edges and
    blends that sampling passes through.
    """
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(count, 2, 3, generator=generator) * 2 - 1
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    pictures = []
    for index in range(count):
        first, second = colours[index, 0].view(3, 1, 1), colours[index, 1].view(3, 1, 1)
        kind = index % 3
        if kind == 0:
            blend = torch.zeros(side, side)
        elif kind == 1:
            cx, cy, rx, ry = (
                torch.rand(4, generator=generator) * torch.tensor([0.5, 0.5, 0.3, 0.3])
                + torch.tensor([0.25, 0.25, 0.1, 0.1])
            ).tolist()
            if index % 2:
                blend = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).float()
            else:
                blend = ((xs - cx).abs() <= rx).float() * ((ys - cy).abs() <= ry).float()
        else:
            angle = float(torch.rand(1, generator=generator)) * 2 * torch.pi
            ramp = xs * torch.cos(torch.tensor(angle)) + ys * torch.sin(torch.tensor(angle))
            blend = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        pictures.append(first * (1 - blend) + second * blend)
    return torch.stack(pictures)


def find_taesd(vae: Any, *, cache_dir: str | Path | None = None) -> tuple[Path | None, str]:
    """(folder of the cached TAESD for this VAE's latents, or None; a sentence saying which or why not)."""
    from huggingface_hub import try_to_load_from_cache

    config = vae.config
    repo = TAESD_REPOS.get(round(float(config.scaling_factor), 5)) if config.latent_channels == 4 else None
    if repo is None:
        return None, (
            f"TAESD is not used: this model's VAE (scaling factor {config.scaling_factor:g}, "
            f"{config.latent_channels} latent channels) is not SD's or SDXL's, which TAESD was made for."
        )
    found = [try_to_load_from_cache(repo, name, cache_dir=cache_dir) for name in _TAESD_FILES]
    if not all(isinstance(path, str) for path in found):
        return (
            None,
            f"TAESD is not used: {repo} is not in the local Hugging Face cache, and previews never download it.",
        )
    return Path(found[0]).parent, f"TAESD from the local cache ({repo})."


class LatentPreviewer:
    """Latents -> a PIL preview, made for one loaded model; build once per model (``for_pipeline``) and keep it."""

    def __init__(
        self, *, kind: str, decoder: Any = None, linear: LinearMap | None = None, scale_factor: int, note: str = ""
    ) -> None:
        if (
            kind not in ("taesd", "vae", "linear")
            or (kind == "linear") != (linear is not None)
            or (kind == "linear") == (decoder is not None)
        ):
            raise ValueError("a LatentPreviewer is a TAESD or VAE decoder, or a linear map; exactly one.")
        self.kind = kind
        self.decoder = decoder  # AutoencoderTiny, or the model's own AutoencoderKL
        self.linear = linear
        self.scale_factor = scale_factor
        self.note = note  # one line: which way it previews and why

    @classmethod
    def for_pipeline(cls, pipe: Any, *, method: str = "auto", cache_dir: str | Path | None = None) -> LatentPreviewer:
        """The previewer for ``pipe``'s model: TAESD when it fits and is cached, else the VAE when small, else a fitted linear map."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
        vae = pipe.vae
        factor = vae_scale_factor(vae)
        why_not = ""
        # 1. TAESD, never downloaded
        if method in ("auto", "taesd"):
            folder, reason = find_taesd(vae, cache_dir=cache_dir)
            if folder is not None:
                from diffusers import AutoencoderTiny

                parameter = next(vae.parameters())
                taesd = AutoencoderTiny.from_pretrained(str(folder)).to(parameter.device, parameter.dtype).eval()
                return cls(kind="taesd", decoder=taesd, scale_factor=factor, note=reason)
            if method == "taesd":
                raise ValueError(reason)
            why_not = f"{reason} "
        # 2. The model's own VAE, when a decode is cheap
        parameters = sum(p.numel() for p in vae.decoder.parameters())
        if method == "vae" or (method == "auto" and parameters <= SMALL_DECODER_PARAMETERS):
            return cls(
                kind="vae",
                decoder=vae,
                scale_factor=factor,
                note=f"{why_not}The model's own VAE ({parameters / 1e6:.1f}M decoder parameters).",
            )
        # 3. A linear map fitted to the VAE
        linear = fit_linear(vae)
        note = f"{why_not}A linear latent-to-RGB map fitted to the VAE (residual {linear.rms_error:.2f})."
        return cls(kind="linear", linear=linear, scale_factor=factor, note=note)

    def preview(self, latents: torch.Tensor, size: tuple[int, int] | None = None, *, index: int = 0) -> Image.Image:
        """Image ``index`` of a batch of latents (as the sampler sees them), at ``size`` (width, height) or the output size."""
        latent = latents[index : index + 1].detach()
        with torch.no_grad():
            if self.kind == "linear":
                # A few thousand multiply-adds: cheaper on the CPU than a kernel launch.
                rgb = torch.einsum("chw,cr->rhw", latent[0].float().cpu(), self.linear.weight) + self.linear.bias.view(
                    3, 1, 1
                )
            else:
                config = self.decoder.config
                # What the pipeline does before decoding (TAESD's factor is 1: it takes the latents as they are).
                unscaled = latent / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
                rgb = self.decoder.decode(unscaled.to(self.decoder.dtype)).sample[0].float()
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(pixels)
        if size is None:
            size = (latent.shape[-1] * self.scale_factor, latent.shape[-2] * self.scale_factor)
        return image if image.size == tuple(size) else image.resize(size, Image.Resampling.NEAREST)


class DenoisedTap:
    """The sampler's latest estimate of the finished latents (x0), read as each step ends.

    Every step of the studio's samplers computes x0 on the way to the next
    latents: Euler, Euler a, DDIM and LCM return it beside them, and the
    DPM-Solver++ and UniPC multistep samplers keep it as their latest model
    output. ``latest`` is None until the first step, or for a sampler that
    keeps no x0 (DPM-Solver in noise-prediction mode); show the latents then.

    The engine makes a fresh scheduler for every run; tap that one.
    """

    def __init__(self, scheduler: Any) -> None:
        self.latest: torch.Tensor | None = None
        step = scheduler.step

        @functools.wraps(step)
        def tapped(*args: Any, **kwargs: Any) -> Any:
            output = step(*args, **kwargs)
            self.latest = _denoised(scheduler, output)
            return output

        scheduler.step = tapped


def _denoised(scheduler: Any, output: Any) -> torch.Tensor | None:
    if isinstance(output, tuple):
        if len(output) > 1:
            return output[1]  # (prev_sample, pred_original_sample | denoised)
    else:
        for name in ("pred_original_sample", "denoised"):
            if getattr(output, name, None) is not None:
                return getattr(output, name)
    config = scheduler.config
    keeps_x0 = getattr(config, "predict_x0", False) or getattr(config, "algorithm_type", "").endswith("dpmsolver++")
    outputs = getattr(scheduler, "model_outputs", None)
    if keeps_x0 and outputs and outputs[-1] is not None:
        return outputs[-1]
    return None


class PreviewPacer:
    """When to make the next preview: every ``every`` steps, and only while previews stay within ``budget`` of the run's time.

    A preview is made when the time spent on previews so far, plus what the
    last one cost, stays within ``budget`` of the time the run has taken
    (counting that preview). None at the last step: the finished image
    follows at once. Make one per run.
    """

    def __init__(
        self, *, every: int = EVERY_STEPS, budget: float = BUDGET, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if every < 1 or not 0 < budget <= 1:
            raise ValueError(
                f"every must be at least 1 and budget above 0 and at most 1 (no limit); got {every} and {budget}."
            )
        self.every = every
        self.budget = budget
        self._clock = clock
        self._started = clock()
        self._spent = 0.0
        self._last = 0.0
        self.made = 0
        self.skipped = 0

    def maybe(self, step: int, total: int, make: Callable[[], T]) -> T | None:
        """``make()`` if a preview is due after ``step`` (0-based) of ``total``, else None."""
        done = step + 1
        if done % self.every or done >= total:
            return None
        elapsed = self._clock() - self._started
        if self._spent + self._last > self.budget * (elapsed + self._last):
            self.skipped += 1
            return None
        begun = self._clock()
        result = make()
        self._last = self._clock() - begun
        self._spent += self._last
        self.made += 1
        return result


def watch(
    previewer: LatentPreviewer, scheduler: Any, show: Callable[[Image.Image], None]
) -> Callable[[tuple[int, int]], Callable[[int, int, dict], None]]:
    """Previews of the runs on ``scheduler``: for each run's (width, height), a per-step callback.

    Each shows the sampler's current estimate of the finished picture
    (``DenoisedTap``, else the step's latents), decoded by ``previewer``, every
    few steps and only while previews cost under a few percent of the run
    (a fresh ``PreviewPacer`` per run).
    """
    tap = DenoisedTap(scheduler)

    def for_run(size: tuple[int, int]) -> Callable[[int, int, dict], None]:
        pacer = PreviewPacer()

        def maybe(step: int, total: int, tensors: dict) -> None:
            latents = tap.latest if tap.latest is not None else tensors.get("latents")
            if latents is None:
                return
            image = pacer.maybe(step, total, lambda: previewer.preview(latents, size))
            if image is not None:
                show(image)

        return maybe

    return for_run
