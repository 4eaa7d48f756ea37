"""Where a model runs and how: the device, the dtype, and the memory and speed switches.

The device and dtype are picked once per engine. The switches (attention
kernel, VAE tiling, CPU offload, compile) are put on each freshly loaded base
pipeline; the task pipelines derived from it share its modules and so its
switches. A switch can change pixels, so ``fingerprint`` goes into every
generation's record.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from pipelines.errors import ModelError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_dtype(device: torch.device, preferred: str | None = None) -> torch.dtype:
    if preferred:
        if preferred not in _DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(_DTYPES)}; got {preferred!r}.")
        return _DTYPES[preferred]
    # Half precision halves memory and is what GPUs are fast at; CPUs are not.
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


ATTENTION = ("sdpa", "math", "xformers")
VAE_TILING = ("auto", "on", "off")
AUTO_TILING_PIXELS = 1536 * 1536  # above this, "auto" decodes the image tile by tile
COMPILE_SCOPES = ("whole", "regional")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
VAE_UPCAST = ("auto", "off")


@dataclass(frozen=True)
class Switches:
    """Memory and speed settings; each is recorded with every generation (a switch can change pixels)."""

    attention: str = "sdpa"  # PyTorch's scaled dot-product attention; "math" is the plain softmax(QK)V
    vae_tiling: str = "auto"
    cpu_offload: bool = False  # keep only the running model part on a small GPU
    compile: bool = False  # torch.compile the UNet / transformer (slow first image, faster after)
    # The GPU levers below (issue 18) all default to off, on CUDA too: none has been measured on a card
    # yet, and each can move low bits. benchmarks/gpu.py measures each on and off; turn on by default
    # only what that run shows to help. At these defaults the CPU path's pixels are unchanged.
    compile_scope: str = "whole"  # regional: only the repeated blocks, so the first image waits far less
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead adds CUDA graphs
    channels_last: bool = False  # the UNet's convolutions in NHWC, which tensor cores prefer
    fuse_qkv: bool = False  # one matmul for query, key and value instead of three
    vae_upcast: str = "auto"  # auto: the VAE config's force_upcast decides; off: decode in the model's dtype

    def check(self, device: torch.device) -> None:
        if self.attention not in ATTENTION:
            raise ModelError(f"attention must be one of {', '.join(ATTENTION)}; got {self.attention!r}.")
        if self.vae_tiling not in VAE_TILING:
            raise ModelError(f"vae_tiling must be one of {', '.join(VAE_TILING)}; got {self.vae_tiling!r}.")
        for name, allowed in (
            ("compile_scope", COMPILE_SCOPES),
            ("compile_mode", COMPILE_MODES),
            ("vae_upcast", VAE_UPCAST),
        ):
            if getattr(self, name) not in allowed:
                raise ModelError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}.")
        if self.fuse_qkv and self.attention != "sdpa":
            raise ModelError(f"fuse_qkv works with attention 'sdpa' only; got attention {self.attention!r}.")
        if self.cpu_offload and device.type != "cuda":
            raise ModelError("cpu_offload needs a CUDA GPU; on this machine the model already lives in CPU memory.")

    def apply(self, pipe: DiffusionPipeline, family: str, device: torch.device) -> None:
        """Put a freshly loaded base pipeline on the device with these switches; derived pipelines share its modules."""
        denoiser = pipe.transformer if family == "flux" else pipe.unet
        if self.attention == "math":
            if family == "flux":
                denoiser.set_attention_backend("_native_math")
            else:
                from diffusers.models.attention_processor import AttnProcessor

                denoiser.set_attn_processor(AttnProcessor())
        elif self.attention == "xformers":
            try:
                if family == "flux":
                    denoiser.set_attention_backend("xformers")
                else:
                    pipe.enable_xformers_memory_efficient_attention()
            except (ImportError, ModuleNotFoundError, ValueError, RuntimeError) as error:
                raise ModelError(f"attention 'xformers' is not available here: {error}") from error
        if self.fuse_qkv:
            denoiser.fuse_qkv_projections()
        if self.channels_last and family != "flux":  # a transformer has no convolutions to lay out
            denoiser.to(memory_format=torch.channels_last)
        if self.vae_upcast == "off":
            pipe.vae.register_to_config(force_upcast=False)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        if self.compile:
            # In place: the task pipelines keep sharing this very module.
            options = {} if self.compile_mode == "default" else {"mode": self.compile_mode}
            if self.compile_scope == "regional":
                denoiser.compile_repeated_blocks(fullgraph=True, **options)
            else:
                denoiser.compile(**options)

    def tile_vae(self, vae: Any, pixels: int) -> None:
        if self.vae_tiling == "on" or (self.vae_tiling == "auto" and pixels > AUTO_TILING_PIXELS):
            vae.enable_tiling()
        else:
            vae.disable_tiling()

    def fingerprint(self) -> dict[str, Any]:
        recorded = {
            "attention": self.attention,
            "vae_tiling": self.vae_tiling,
            "cpu_offload": self.cpu_offload,
            "compile": self.compile,
        }
        # The GPU levers are recorded only when moved from their default, so records made before they
        # existed still compare equal to a rerun at the defaults.
        for lever in fields(self):
            if lever.name not in recorded and getattr(self, lever.name) != lever.default:
                recorded[lever.name] = getattr(self, lever.name)
        return recorded
