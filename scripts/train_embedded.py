"""Train the embedded model: a tiny Stable Diffusion of flat shapes (issue 3).

Stages, each resumable and deterministic for a given sequence of runs:

    vae     train the AutoencoderKL on rendered scenes, then set its scaling factor
    unet    train the UNet and the text encoder jointly on the VAE's latents
    export  write the EMA weights as an fp16 diffusers folder into pipelines/embedded/model

Every stage starts from the weights in the output folder when they exist, so a
run that is stopped (a session ends, a machine goes away) loses at most one
chunk. The committed fp16 folder is the resume point between sessions; the
optimizer starts afresh (with a short warm-up) after a resume.

On a 2-core CPU set, as the issue asks:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736
Example:
    .venv/bin/python scripts/train_embedded.py vae --steps 3000
    .venv/bin/python scripts/train_embedded.py unet --minutes 60
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.embedded import FOLDER, SCHEDULER_CONFIG, build_components, defaults  # noqa: E402
from pipelines.embedded.world import caption, render, sample_scene  # noqa: E402

WORK = Path(os.environ.get("ATELIER_TRAIN_DIR", Path(__file__).resolve().parents[1] / ".train"))
LOG = FOLDER / "training_log.jsonl"


def log(stage: str, **values) -> None:
    values = {"stage": stage, **values}
    print(json.dumps(values), flush=True)
    with LOG.open("a") as handle:
        handle.write(json.dumps(values) + "\n")


def scenes_batch(rng: np.random.Generator, n: int):
    scenes = [sample_scene(rng) for _ in range(n)]
    pixels = np.stack([render(s) for s in scenes]).astype(np.float32) / 127.5 - 1
    return scenes, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def load_components():
    """The shipped folder's weights (upcast to fp32) when they exist, else a fresh init."""
    components = build_components(seed=0)
    if (FOLDER / "model_index.json").is_file():
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        components["vae"] = AutoencoderKL.from_pretrained(FOLDER / "vae", dtype=torch.float32)
        components["unet"] = UNet2DConditionModel.from_pretrained(FOLDER / "unet", dtype=torch.float32)
        components["text_encoder"] = CLIPTextModel.from_pretrained(FOLDER / "text_encoder", dtype=torch.float32)
        print("resuming from", FOLDER, flush=True)
    return components


def save(components, *, note: str) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    staging = FOLDER.with_name(FOLDER.name + ".saving")
    pipe.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    pipe.to(torch.float32)
    for keep in ("atelier.json", "README.md", "training_log.jsonl", "loss.png", "samples.png", "evaluation.json"):
        if (FOLDER / keep).exists():
            (staging / keep).write_bytes((FOLDER / keep).read_bytes())
    if FOLDER.exists():
        old = FOLDER.with_name(FOLDER.name + ".old")
        os.replace(FOLDER, old)
        os.replace(staging, FOLDER)
        import shutil

        shutil.rmtree(old)
    else:
        os.replace(staging, FOLDER)
    print("saved", note, flush=True)


# -- stage 1: the VAE ----------------------------------------------------------


def train_vae(args) -> None:
    components = load_components()
    vae = components["vae"].train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    state = _read_state()
    start = state.get("vae_steps", 0)
    started = time.perf_counter()
    for step in range(start, start + args.steps):
        rng = np.random.default_rng([args.seed, 1, step])
        torch.manual_seed(args.seed * 1_000_003 + step)
        _, pixels = scenes_batch(rng, args.batch)
        posterior = vae.encode(pixels).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        # L1 keeps flat colours exact; the tiny KL keeps latents well scaled.
        loss = F.l1_loss(decoded, pixels) + F.mse_loss(decoded, pixels) + 1e-6 * posterior.kl().mean()
        warm = min(1.0, (step - start + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == start + args.steps - 1:
            log("vae", step=step, loss=round(loss.item(), 5), seconds=round(time.perf_counter() - started, 1))
    vae.eval()
    # Latents divided by their std make unit-variance inputs for the UNet,
    # as the scaling factor does for Stable Diffusion's VAE (0.18215).
    with torch.no_grad():
        _, pixels = scenes_batch(np.random.default_rng([args.seed, 9]), 512)
        std = vae.encode(pixels).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1 / std, 5))
    state["vae_steps"] = start + args.steps
    _write_state(state)
    save(components, note=f"vae after {state['vae_steps']} steps, scaling factor {1 / std:.4f}")


# -- stage 2: UNet and text encoder --------------------------------------------


def _noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def _latent_pool(vae, *, seed: int, size: int):
    """A fixed pool of scenes and their latents (encoding each step would cost more than the UNet)."""
    import hashlib

    # Keyed by the VAE's weights too: a retrained VAE makes old latents wrong.
    vae_hash = hashlib.sha256((FOLDER / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:12]
    cache = WORK / f"latents-{seed}-{size}-{vae_hash}.pt"
    if cache.is_file():
        return torch.load(cache)
    rng = np.random.default_rng([seed, 2])
    scenes, latents = [], []
    with torch.no_grad():
        for _ in range(0, size, 256):
            batch, pixels = scenes_batch(rng, 256)
            scenes.extend(batch)
            latents.append(vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor)
    pool = {"scenes": [s.__dict__ for s in scenes], "latents": torch.cat(latents)}
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save(pool, cache)
    return pool


def train_unet(args) -> None:
    from pipelines.embedded.world import Scene

    components = load_components()
    vae, unet, text_encoder, tokenizer = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    vae.eval().requires_grad_(False)
    unet.train()
    text_encoder.train()
    scheduler = _noise_scheduler()
    pool = _latent_pool(vae, seed=args.seed, size=args.pool)
    scenes = [Scene(**s) for s in pool["scenes"]]
    latents_all = pool["latents"]
    optimizer = torch.optim.AdamW(
        [{"params": unet.parameters()}, {"params": text_encoder.parameters()}], lr=args.lr, weight_decay=1e-2
    )
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    state = _read_state()
    start = state.get("unet_steps", 0)
    alphas = scheduler.alphas_cumprod
    deadline = time.perf_counter() + args.minutes * 60
    started = time.perf_counter()
    step = start
    losses = []
    while time.perf_counter() < deadline and (args.steps is None or step < start + args.steps):
        rng = np.random.default_rng([args.seed, 3, step])
        torch.manual_seed(args.seed * 1_000_003 + step)
        index = rng.integers(len(scenes), size=args.batch)
        latents = latents_all[index]
        texts = [caption(scenes[i], rng) if rng.random() >= 0.1 else "" for i in index]  # 10% unconditional
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        noise = torch.randn_like(latents)
        timesteps = torch.from_numpy(rng.integers(0, 1000, size=args.batch)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps)
        hidden = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, hidden).sample
        # Min-SNR weighting (Hang et al. 2023), v-prediction form: no timestep dominates.
        snr = alphas[timesteps] / (1 - alphas[timesteps]).clamp(min=1e-8)
        weight = torch.clamp(snr, max=5.0) / (snr + 1)
        loss = (weight * ((prediction - target) ** 2).mean(dim=(1, 2, 3))).mean()
        warm = min(1.0, (step - start + 1) / 200)
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.total_steps)))
        for group, base in zip(optimizer.param_groups, (args.lr, args.lr * 0.5)):
            group["lr"] = base * warm * (0.1 + 0.9 * decay)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        optimizer.step()
        with torch.no_grad():
            ema = min(args.ema, (1 + step - start) / (10 + step - start))
            for model, shadow in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, s in zip(model.parameters(), shadow.parameters()):
                    s.lerp_(p, 1 - ema)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log("unet", step=step, loss=round(float(np.mean(losses)), 5),
                seconds=round(time.perf_counter() - started, 1))
            losses = []
        if step % args.save_every == 0:
            _save_unet(components, ema_unet, ema_text, state, step)
    _save_unet(components, ema_unet, ema_text, state, step)


def _save_unet(components, ema_unet, ema_text, state, step) -> None:
    exported = dict(components)
    exported["unet"], exported["text_encoder"] = ema_unet, ema_text
    from diffusers import EulerDiscreteScheduler

    exported["scheduler"] = EulerDiscreteScheduler.from_config(_noise_scheduler().config)
    state["unet_steps"] = step
    _write_state(state)
    save(exported, note=f"unet after {step} steps")


def _read_state() -> dict:
    path = FOLDER / "atelier.json"
    return json.loads(path.read_text()).get("training", {}) if path.is_file() else {}


def _write_state(training: dict) -> None:
    path = FOLDER / "atelier.json"
    card = json.loads(path.read_text()) if path.is_file() else {}
    card.setdefault("defaults", defaults())
    card["training"] = training
    FOLDER.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2) + "\n")


def plot_loss(_args=None) -> None:
    """loss.png beside the card: one panel per stage, log-scale loss against step."""
    from PIL import Image, ImageDraw

    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    stages = [stage for stage in ("vae", "unet") if any(r["stage"] == stage for r in rows)]
    width, height, pad = 480, 240, 36
    sheet = Image.new("RGB", (width * len(stages), height), "white")
    draw = ImageDraw.Draw(sheet)
    for panel, stage in enumerate(stages):
        points = [(r["step"], r["loss"]) for r in rows if r["stage"] == stage and r["loss"] > 0]
        steps = [p[0] for p in points]
        logs = [math.log10(p[1]) for p in points]
        x0, x1 = panel * width + pad, (panel + 1) * width - 10
        y0, y1 = 20, height - pad
        span_x = max(1, max(steps) - min(steps))
        low, high = min(logs), max(logs)
        span_y = max(1e-6, high - low)
        xy = [(x0 + (s - min(steps)) / span_x * (x1 - x0), y1 - (v - low) / span_y * (y1 - y0)) for s, v in zip(steps, logs)]
        draw.rectangle((x0, y0, x1, y1), outline=(180, 180, 180))
        draw.line(xy, fill=(30, 60, 220), width=2)
        draw.text((x0, 4), f"{stage}: loss {10 ** high:.3g} -> {10 ** logs[-1]:.3g} (log scale)", fill="black")
        draw.text((x0, y1 + 6), f"step {min(steps)}", fill="black")
        draw.text((x1 - 70, y1 + 6), f"step {max(steps)}", fill="black")
    sheet.save(FOLDER / "loss.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["vae", "unet", "plot"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=1e9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=24_576, help="scenes encoded once for UNet training")
    parser.add_argument("--total-steps", type=int, default=30_000, help="length of the cosine schedule")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Tiny EMA and weight updates can go subnormal, which CPUs compute very slowly.
    torch.set_flush_denormal(True)
    FOLDER.mkdir(parents=True, exist_ok=True)
    if args.stage == "plot":
        plot_loss()
    elif args.stage == "vae":
        args.lr = args.lr or 1e-3
        args.steps = args.steps or 2000
        train_vae(args)
    else:
        args.lr = args.lr or 4e-4
        train_unet(args)


if __name__ == "__main__":
    main()
