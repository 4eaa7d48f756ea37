"""Training a LoRA on a loaded model: PEFT layers on the UNet's attention, saved in kohya's format.

What it hides:
- the data, prepared once: each image cropped to its bucket
  (``training_data``), encoded by the VAE, its caption by the pipeline's own
  ``encode_prompt`` (SDXL's pooled embedding and size numbers too), since
  both stay frozen;
- the loop: LoRA layers (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, as
  diffusers' ``train_text_to_image_lora.py``) on a copy of the UNet, so the
  engine's shared modules never see a half-trained adapter; the model's own
  noise schedule and prediction type (epsilon or v); every random draw seeded
  by (seed, step), so the same data and settings give the same weights on
  the same machine, and a resumed job the same as one never stopped;
- the job's folder ``<loras>/.<name>.training``: checkpoints (the LoRA
  layers and AdamW's state, written under a temporary name and renamed),
  sample images; a job started again with the same dataset, settings and
  model resumes from its last checkpoint;
- the result: ``<name>.safetensors`` with kohya's keys
  (``lora_unet_<module>.lora_down/.lora_up/.alpha``), which diffusers (so
  Atelier's ``pipelines.lora``), A1111 and ComfyUI all read, and the card
  beside it (``<name>.json``, ``<name>.loss.png``, ``<name>.samples.png``).
  Everything is written in the job's folder first and moved into place at
  the end, the LoRA file last, so the folder never lists a half-written one.

Text-encoder layers are not trained: a brand style lives in the UNet, and
loading text-encoder layers needs Atelier's own path around transformers
(see ``pipelines.lora.text_encoder_problem``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import peft
import torch
from PIL import Image, ImageDraw

from pipelines.errors import FAMILY_NAMES
from pipelines.progress import CancelToken
from pipelines.samplers import make_scheduler
from pipelines.training_data import (
    LORA_SUFFIX,
    Dataset,
    DatasetError,
    TrainingSettings,
    bucket_for,
    buckets,
    check_name,
    crop_to,
    load_image,
)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SAMPLER = "DPM++ 2M"
SNR_GAMMA = 5.0
# Sample images: (steps, guidance) for each kind of model.
_SAMPLE_CALL = {"embedded": (20, 5.0), "sd": (25, 7.0), "sdxl": (25, 6.0)}
_BASE_MODEL_VERSION = {"embedded": "atelier_embedded", "sd": "sd_v1", "sdxl": "sdxl_base_v1-0"}

TrainingProgress = Callable[[int, int, float], None]  # (step, total, loss)
SampleFn = Callable[[int, Image.Image], None]  # (step, image)


@dataclass(frozen=True)
class TrainingResult:
    name: str
    path: Path | None  # the LoRA file; None when cancelled
    card: dict[str, Any] | None
    steps: int
    resumed_from: int  # the checkpoint's step, 0 when the job started afresh
    losses: list[float]
    seconds: float  # this run's wall time (not the interrupted runs')
    cancelled: bool
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # PEFT's names, as trained


def kind_of(source_kind: str, family: str) -> str:
    """Which defaults a model takes: ``embedded``, ``sd`` or ``sdxl``; a DatasetError for a model LoRAs cannot be trained on."""
    if source_kind == "embedded":
        return "embedded"
    if family not in ("sd", "sdxl"):
        raise DatasetError(
            f"model: LoRA training takes Stable Diffusion 1.x or SDXL models; "
            f"this is a {FAMILY_NAMES.get(family, family)} model, so pick one of those."
        )
    return family


def work_folder(loras_folder: Path | str, name: str) -> Path:
    """Where a job keeps its checkpoints and samples until the LoRA is in place."""
    return Path(loras_folder) / f".{name}.training"


def train_lora(
    pipe: Any,
    dataset: Dataset,
    settings: TrainingSettings,
    *,
    name: str,
    loras_folder: Path | str,
    kind: str,
    model: str = "",
    progress: TrainingProgress | None = None,
    on_sample: SampleFn | None = None,
    cancel: CancelToken | None = None,
) -> TrainingResult:
    """Train ``name`` on ``dataset`` with ``pipe``'s model (left as it was) and put it in ``loras_folder``.

    ``kind`` picks the defaults (``kind_of``); ``model`` names the model and
    its revision for the card and for telling whether a checkpoint belongs to
    this job. Cancelling stops at the next step and writes nothing.
    """
    started = time.perf_counter()
    # 1. Check inputs
    loras_folder = Path(loras_folder)
    check_name(name, loras_folder)
    settings = settings.resolved(kind)
    family = "sdxl" if kind == "sdxl" else "sd"
    device = pipe.unet.device
    fingerprint = _fingerprint(dataset, settings, model, kind)
    work = work_folder(loras_folder, name)

    # 2. The data, once: crops, latents, caption embeddings
    data = _Data(pipe, dataset, settings, family)

    # 3. LoRA layers on a copy of the UNet, and their optimizer
    unet = _lora_unet(pipe.unet, settings, gradient_checkpointing=kind != "embedded")
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=1e-2)

    # 4. The last checkpoint of this same job, if it crashed or was stopped
    start, losses = _resume(work, fingerprint, unet, optimizer)
    work.mkdir(parents=True, exist_ok=True)
    sample_prompt = settings.sample_prompt or dataset.examples[0].caption

    # 5. The steps
    schedule = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    warmup = max(1, min(100, settings.steps // 10))
    for step in range(start, settings.steps):
        if cancel is not None and cancel.cancelled:
            shutil.rmtree(work, ignore_errors=True)
            return TrainingResult(name, None, None, step, start, losses, time.perf_counter() - started, cancelled=True)
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * min(1.0, (step + 1) / warmup)
        loss = _train_step(unet, data, schedule, settings, step, params, optimizer, device)
        losses.append(loss)
        done = step + 1
        if progress is not None:
            progress(done, settings.steps, loss)
        if done == settings.steps or (settings.sample_every and done % settings.sample_every == 0):
            image = _sample(pipe, unet, sample_prompt, settings, kind)
            image.save(work / f"sample-{done:06d}.png")
            if on_sample is not None:
                on_sample(done, image)
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
            _checkpoint(work, fingerprint, done, unet, optimizer, losses)

    # 6. The LoRA file and its card, written in the job's folder, then moved into place
    weights = {key: value.detach().cpu().clone() for key, value in peft.get_peft_model_state_dict(unet).items()}
    seconds = time.perf_counter() - started
    card = _card(name, dataset, settings, data, losses, work, model, kind, start, seconds, sample_prompt)
    _write(work, name, weights, settings, card, losses, kind, dataset)
    path = _move_into_place(work, loras_folder, name)
    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return TrainingResult(name, path, card, settings.steps, start, losses, seconds, cancelled=False, weights=weights)


# -- the data ---------------------------------------------------------------------


class _Data:
    """Each example's latents and caption embeddings (and SDXL's pooled embedding and size numbers), by bucket."""

    def __init__(self, pipe: Any, dataset: Dataset, settings: TrainingSettings, family: str) -> None:
        vae, device = pipe.vae, pipe.unet.device
        # Sides divisible down to the UNet's smallest feature map.
        multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        sizes = buckets(settings.resolution, multiple)
        self.latents, self.embeds, self.pooled, self.time_ids, self.buckets = [], [], [], [], []
        members: dict[tuple[int, int], list[int]] = {}
        # SDXL's VAE overflows in float16 (its config says force_upcast): encode in float32.
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        encoder = copy.deepcopy(vae).float() if upcast else vae
        with torch.no_grad():
            for index, example in enumerate(dataset.examples):
                image = load_image(dataset, example)
                bucket = bucket_for(image.width, image.height, sizes)
                self.buckets.append(bucket)
                members.setdefault(bucket, []).append(index)
                cropped, (top, left) = crop_to(image, bucket)
                pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
                pixels = pixels.to(device, encoder.dtype)
                latent = encoder.encode(pixels).latent_dist.mean * vae.config.scaling_factor
                self.latents.append(latent[0].to(pipe.unet.dtype))
                if family == "sdxl":
                    embeds, _, pooled, _ = pipe.encode_prompt(
                        example.caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                    )
                    self.pooled.append(pooled[0])
                    size = (image.height, image.width, top, left, bucket[1], bucket[0])
                    self.time_ids.append(torch.tensor(size, dtype=embeds.dtype, device=device))
                else:
                    embeds = pipe.encode_prompt(example.caption, device, 1, False)[0]
                self.embeds.append(embeds[0])
        self.groups = [members[bucket] for bucket in sorted(members)]
        self.weights = np.array([len(group) for group in self.groups], dtype=np.float64) / len(dataset.examples)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[list[int], dict[str, torch.Tensor]]:
        """``size`` examples of one bucket (chosen in proportion to its images), without repeats where it has enough."""
        group = self.groups[int(rng.choice(len(self.groups), p=self.weights))]
        index = [group[i] for i in rng.choice(len(group), size=size, replace=len(group) < size)]
        inputs = {"encoder_hidden_states": torch.stack([self.embeds[i] for i in index])}
        if self.pooled:
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.stack([self.pooled[i] for i in index]),
                "time_ids": torch.stack([self.time_ids[i] for i in index]),
            }
        return index, inputs


# -- the loop ---------------------------------------------------------------------


def _lora_unet(base: Any, settings: TrainingSettings, *, gradient_checkpointing: bool) -> Any:
    unet = copy.deepcopy(base)
    if getattr(unet, "peft_config", None):  # LoRAs a generation left loaded: train on the bare base
        unet.delete_adapters(list(unet.peft_config))
    unet.requires_grad_(False)
    # The layers' random start comes from the seed, without touching the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        unet.add_adapter(
            peft.LoraConfig(
                r=settings.rank, lora_alpha=settings.rank, init_lora_weights="gaussian", target_modules=TARGETS
            )
        )
    for parameter in unet.parameters():
        if parameter.requires_grad:  # trained in float32 even on a float16 base, as diffusers' scripts do
            parameter.data = parameter.data.float()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet.train()


def _autocast(device: torch.device, dtype: torch.dtype):
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _train_step(unet, data: _Data, schedule, settings: TrainingSettings, step, params, optimizer, device) -> float:
    # Every draw from (seed, step): a resumed job draws what an unbroken one would have.
    rng = np.random.default_rng([settings.seed, step])
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    index, inputs = data.batch(rng, settings.batch_size)
    latents = torch.stack([data.latents[i] for i in index]).float()
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.from_numpy(rng.integers(0, schedule.config.num_train_timesteps, size=len(index))).to(device)
    noisy = schedule.add_noise(latents, noise, timesteps)
    if schedule.config.prediction_type == "v_prediction":
        target = schedule.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    with _autocast(device, unet.dtype):
        prediction = unet(noisy.to(unet.dtype), timesteps, **inputs).sample
    # Min-SNR weighting (Hang et al. 2023, diffusers' --snr_gamma 5): the nearly pure-noise steps, whose
    # targets no model can predict, would otherwise drown out the mid-noise ones where a style is drawn.
    alphas = schedule.alphas_cumprod.to(device)[timesteps]
    snr = alphas / (1 - alphas).clamp(min=1e-8)
    clipped = torch.clamp(snr, max=SNR_GAMMA)
    weight = clipped / (snr + 1) if schedule.config.prediction_type == "v_prediction" else clipped / snr.clamp(min=1e-8)
    errors = ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    loss = (weight * errors).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return float(loss.detach())


def _sample(pipe: Any, unet: Any, prompt: str, settings: TrainingSettings, kind: str) -> Image.Image:
    """The fixed prompt at the fixed seed, drawn with the LoRA as trained so far."""
    steps, guidance = _SAMPLE_CALL[kind]
    sampler = type(pipe).from_pipe(pipe, unet=unet)
    sampler.scheduler = make_scheduler(SAMPLER, pipe.scheduler.config)
    sampler.set_progress_bar_config(disable=True)
    unet.eval()
    try:
        return sampler(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=settings.resolution,
            height=settings.resolution,
            generator=torch.Generator("cpu").manual_seed(settings.sample_seed),
        ).images[0]
    finally:
        unet.train()


# -- checkpoints ------------------------------------------------------------------


def _fingerprint(dataset: Dataset, settings: TrainingSettings, model: str, kind: str) -> str:
    text = json.dumps([dataset.fingerprint(), settings.to_dict(), model, kind], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _checkpoint(work: Path, fingerprint: str, step: int, unet, optimizer, losses: list[float]) -> None:
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "lora": {name: p.detach().cpu() for name, p in unet.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "losses": list(losses),
    }
    # A crash while writing leaves the previous checkpoint whole.
    partial = work / "checkpoint.pt.partial"
    torch.save(state, partial)
    os.replace(partial, work / "checkpoint.pt")


def _resume(work: Path, fingerprint: str, unet, optimizer) -> tuple[int, list[float]]:
    """The step to start from and the losses so far; a job folder from other data or settings is started afresh."""
    path = work / "checkpoint.pt"
    if path.is_file():
        state = torch.load(path, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            device = next(p for p in unet.parameters() if p.requires_grad).device
            unet.load_state_dict({k: v.to(device) for k, v in state["lora"].items()}, strict=False)
            optimizer.load_state_dict(state["optimizer"])
            return int(state["step"]), [float(x) for x in state["losses"]]
    if work.exists():
        shutil.rmtree(work)
    return 0, []


# -- the result -------------------------------------------------------------------


def kohya_keys(weights: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """PEFT's UNet layers (``down_blocks.0...to_q.lora_A.weight``) under kohya's names, with each layer's alpha."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        module, _, which = key.rpartition(".lora_")
        base = "lora_unet_" + module.replace(".", "_")
        role = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[which]
        out[f"{base}.{role}"] = tensor.float().contiguous()
        # alpha = rank: a scale of 1, what PEFT trained with.
        out[f"{base}.alpha"] = torch.tensor(float(rank))
    return out


def _write(work: Path, name: str, weights, settings: TrainingSettings, card, losses, kind, dataset: Dataset) -> None:
    from safetensors.torch import save_file

    metadata = {  # kohya's header fields, which A1111's and ComfyUI's LoRA lists show
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": str(settings.rank),
        "ss_output_name": name,
        "ss_base_model_version": _BASE_MODEL_VERSION[kind],
        "ss_steps": str(settings.steps),
        "ss_learning_rate": str(settings.learning_rate),
        "ss_seed": str(settings.seed),
        "ss_resolution": f"({settings.resolution}, {settings.resolution})",
        "ss_num_train_images": str(len(dataset.examples)),
        "ss_training_comment": f"trigger word: {settings.trigger}" if settings.trigger else "",
        "modelspec.trigger_phrase": settings.trigger,
    }
    save_file(kohya_keys(weights, settings.rank), work / "lora.safetensors", metadata=metadata)
    (work / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    draw_loss(losses).save(work / "loss.png")
    draw_samples(work).save(work / "samples.png")


def _move_into_place(work: Path, loras_folder: Path, name: str) -> Path:
    target = loras_folder / f"{name}{LORA_SUFFIX}"
    if target.exists():  # another job took the name while this one ran
        raise DatasetError(f"name {name!r} is taken: a LoRA of that name appeared in {loras_folder}; pick another.")
    for source, suffix in (("card.json", ".json"), ("loss.png", ".loss.png"), ("samples.png", ".samples.png")):
        os.replace(work / source, loras_folder / f"{name}{suffix}")
    os.replace(work / "lora.safetensors", target)  # last: the folder lists it only once all is there
    shutil.rmtree(work, ignore_errors=True)
    return target


def _card(name, dataset: Dataset, settings, data: _Data, losses, work, model, kind, start, seconds, prompt) -> dict:
    samples = sorted(int(p.stem.split("-")[1]) for p in work.glob("sample-*.png"))
    return {
        "name": name,
        "file": f"{name}{LORA_SUFFIX}",
        "format": "kohya (lora_unet_*.lora_down/lora_up/alpha); UNet attention to_q, to_k, to_v, to_out.0",
        "model": model,
        "kind": kind,
        "trigger": settings.trigger,
        "settings": settings.to_dict(),
        "dataset": {
            "folder": str(dataset.folder),
            "fingerprint": dataset.fingerprint(),
            "images": [
                {
                    "file": e.file,
                    "sha256": e.sha256,
                    "caption": e.caption,
                    "size": [e.width, e.height],
                    "bucket": list(bucket),
                }
                for e, bucket in zip(dataset.examples, data.buckets)
            ],
        },
        "loss": {
            "first": losses[0] if losses else None,
            "last_10_mean": float(np.mean(losses[-10:])) if losses else None,
            "values": [round(x, 6) for x in losses],
            "curve": f"{name}.loss.png",
        },
        "samples": {"prompt": prompt, "seed": settings.sample_seed, "steps": samples, "grid": f"{name}.samples.png"},
        "resumed_from": start,
        "seconds": round(seconds, 1),
        "environment": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
    }


def draw_loss(losses: list[float], size: tuple[int, int] = (480, 240)) -> Image.Image:
    """The loss by step, raw in grey and a moving average in blue."""
    width, height = size
    pad = 36
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    x0, x1, y0, y1 = pad, width - 10, 20, height - pad
    draw.rectangle((x0, y0, x1, y1), outline=(180, 180, 180))
    if losses:
        window = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        high = max(losses)
        span_x = max(1, len(losses) - 1)

        def point(i: float, value: float) -> tuple[float, float]:
            return x0 + i / span_x * (x1 - x0), y1 - value / max(high, 1e-12) * (y1 - y0)

        draw.line([point(i, v) for i, v in enumerate(losses)], fill=(190, 190, 190), width=1)
        draw.line([point(i + window - 1, v) for i, v in enumerate(smooth)], fill=(30, 60, 220), width=2)
        draw.text((x0, 4), f"loss {losses[0]:.4g} -> {smooth[-1]:.4g} (mean of last {window})", fill="black")
        draw.text((x0, y1 + 6), "step 1", fill="black")
        draw.text((x1 - 70, y1 + 6), f"step {len(losses)}", fill="black")
    return sheet


def draw_samples(work: Path, side: int = 128) -> Image.Image:
    """The sample images in step order, side by side, each labelled with its step."""
    paths = sorted(work.glob("sample-*.png"))
    sheet = Image.new("RGB", (max(1, len(paths)) * side, side + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for column, path in enumerate(paths):
        with Image.open(path) as image:
            tile = image.convert("RGB").resize((side, side), Image.Resampling.NEAREST)
        sheet.paste(tile, (column * side, 0))
        draw.text((column * side + 4, side + 2), f"step {int(path.stem.split('-')[1])}", fill="black")
    return sheet
