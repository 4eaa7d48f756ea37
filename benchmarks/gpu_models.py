"""SDXL- and FLUX-architecture pipelines with random weights, built from the public configs kept beside this file.

Speed does not depend on weight values, so the GPU benchmark (``gpu.py``) and
checks (``gpu_checks.py``) need no download: ``configs/sdxl`` and
``configs/flux`` hold the component configs of stabilityai/stable-diffusion-xl-base-1.0
and black-forest-labs/FLUX.1-dev as diffusers and transformers define them
(the UNet's ``transformer_layers_per_block`` [1, 2, 10] and 2816-wide
added embedding, FLUX's 19 double and 38 single blocks, CLIP-L, OpenCLIP
bigG, T5 v1.1 XXL). ``tiny=True`` shrinks the widths and depths but keeps
every block type, so the same code paths run on a CPU in seconds.

Tokenizers: both families reuse the embedded model's CLIP tokenizer
(``pipelines/embedded/model/tokenizer``, a 629-word vocabulary), with its
length set to what each text encoder reads (77 tokens for CLIP, 512 for
T5). Its ids stay below every encoder's vocabulary size, and the sequence
lengths, which set the cost, are the real models'.

Built models live on ``device`` from the start (no CPU copy of a 12-billion
parameter transformer), in float32 for their random initialisation, then
cast to ``dtype``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from pipelines import embedded

CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILIES = ("sdxl", "flux")
TOKENIZER = embedded.FOLDER / "tokenizer"
TINY_VOCAB = 1000  # above the embedded tokenizer's 629 ids


def config(family: str, component: str, *, tiny: bool = False) -> dict[str, Any]:
    """A component's public config; with ``tiny``, the same blocks at toy widths and depths."""
    values = json.loads((CONFIGS / family / f"{component}.json").read_text())
    return _shrink(family, component, values) if tiny else values


def _shrink(family: str, component: str, values: dict[str, Any]) -> dict[str, Any]:
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    if component in ("text_encoder", "text_encoder_2") and values.get("model_type") == "clip_text_model":
        return {**values, **text, "projection_dim": 32, "vocab_size": TINY_VOCAB}
    if component == "text_encoder_2":  # T5
        return {
            **values,
            "d_model": 32,
            "d_ff": 64,
            "d_kv": 8,
            "num_heads": 4,
            "num_layers": 2,
            "vocab_size": TINY_VOCAB,
        }
    if component == "vae":
        return {**values, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 64}
    if component == "unet":
        # The SDXL layout (no attention at the first level, deeper transformers below) at toy widths;
        # the added embedding is six 8-wide time features plus the second encoder's 32-wide pooled output.
        return {
            **values,
            "block_out_channels": [32, 64, 64],
            "attention_head_dim": [2, 4, 4],
            "transformer_layers_per_block": [1, 1, 2],
            "layers_per_block": 1,
            "cross_attention_dim": 64,
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "sample_size": 8,
        }
    if component == "transformer":
        return {
            **values,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "axes_dims_rope": [4, 6, 6],
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "num_layers": 1,
            "num_single_layers": 2,
        }
    return values


def tokenizer(max_length: int) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=max_length)


def _clip(values: dict[str, Any], with_projection: bool):
    settings = CLIPTextConfig(**{k: v for k, v in values.items() if k != "architectures"})
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(settings)


def _model_config(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def build(family: str, *, tiny: bool, device: torch.device | str, dtype: torch.dtype, seed: int = 0):
    """The family's text-to-image pipeline with random weights, on ``device`` in ``dtype``."""
    torch.manual_seed(seed)
    # Schedulers keep their tables on the CPU: made outside the device context.
    scheduler_class = FlowMatchEulerDiscreteScheduler if family == "flux" else EulerDiscreteScheduler
    scheduler = scheduler_class.from_config(config(family, "scheduler"))
    with torch.device(device):
        vae = AutoencoderKL(**_model_config(config(family, "vae", tiny=tiny)))
        text_encoder = _clip(config(family, "text_encoder", tiny=tiny), with_projection=False)
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=_clip(config(family, "text_encoder_2", tiny=tiny), with_projection=True),
                tokenizer=tokenizer(77),
                tokenizer_2=tokenizer(77),
                unet=UNet2DConditionModel(**_model_config(config(family, "unet", tiny=tiny))),
                scheduler=scheduler,
            )
        elif family == "flux":
            t5 = config(family, "text_encoder_2", tiny=tiny)
            pipe = FluxPipeline(
                scheduler=scheduler,
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer(77),
                text_encoder_2=T5EncoderModel(T5Config(**{k: v for k, v in t5.items() if k != "architectures"})),
                tokenizer_2=tokenizer(512),
                transformer=FluxTransformer2DModel(**_model_config(config(family, "transformer", tiny=tiny))),
            )
        else:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}.")
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save(pipe, folder: Path) -> float:
    """Write ``pipe`` as a diffusers folder the engine loads like any other model; returns the seconds it took."""
    started = time.perf_counter()
    pipe.save_pretrained(str(folder))
    return time.perf_counter() - started


def denoiser(pipe, family: str):
    return pipe.transformer if family == "flux" else pipe.unet


def denoiser_inputs(pipe, family: str, *, batch: int, width: int, height: int, guided: bool) -> dict[str, Any]:
    """One denoising step's inputs at the pipeline's real shapes (the guided batch is doubled for SDXL)."""
    model = denoiser(pipe, family)
    device, dtype = model.device, model.dtype
    rows = batch * (2 if guided and family != "flux" else 1)
    if family == "flux":
        tokens = (height // 16) * (width // 16)
        text = 512
        return {
            "hidden_states": torch.randn(rows, tokens, model.config.in_channels, device=device, dtype=dtype),
            "encoder_hidden_states": torch.randn(
                rows, text, model.config.joint_attention_dim, device=device, dtype=dtype
            ),
            "pooled_projections": torch.randn(rows, model.config.pooled_projection_dim, device=device, dtype=dtype),
            "timestep": torch.full((rows,), 0.5, device=device, dtype=dtype),
            "guidance": torch.full((rows,), 3.5, device=device, dtype=dtype),
            "img_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
            "txt_ids": torch.zeros(text, 3, device=device, dtype=dtype),
            "return_dict": False,
        }
    config_ = model.config
    pooled = config_.projection_class_embeddings_input_dim - 6 * config_.addition_time_embed_dim
    return {
        "sample": torch.randn(rows, config_.in_channels, height // 8, width // 8, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(rows, 77, config_.cross_attention_dim, device=device, dtype=dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(rows, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[height, width, 0, 0, height, width]] * rows, device=device, dtype=dtype),
        },
        "return_dict": False,
    }


def step_flops(pipe, family: str, *, batch: int, width: int, height: int) -> int:
    """FLOPs of one (guided, for SDXL) denoising step, counted by torch's FLOP counter on the real shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = denoiser_inputs(pipe, family, batch=batch, width=width, height=height, guided=True)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        denoiser(pipe, family)(**inputs)
    return counter.get_total_flops()
