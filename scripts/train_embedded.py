"""Train the embedded model: a tiny Stable Diffusion of flat shapes (issue 3).

Stages, each resumable and deterministic for a given sequence of runs:

    vae         train the AutoencoderKL on rendered scenes, then set its scaling factor
    unet        train the UNet and the text encoder jointly on the VAE's latents
    controlnet  train a small ControlNet on Canny edges of the same world, base frozen
    plot        draw loss.png from the training log

Each stage writes its EMA weights as fp16 diffusers folders into
pipelines/embedded/model (the ControlNet into pipelines/embedded/controlnet-canny).

Every stage starts from the weights in the output folder when they exist, so a
run that is stopped (a session ends, a machine goes away) loses at most one
chunk. The committed fp16 folder is the resume point between sessions; the
optimizer starts afresh (with a short warm-up) after a resume.

A run is either a number of steps (``--steps N``: the learning rate warms
up, then follows one cosine cycle over exactly N steps, so the same command
gives the same weights on the same device) or a time budget (``--minutes M``:
the first steps are timed and N is fixed from them before the cosine decay
starts; the log records N, so ``--steps N`` repeats the run). ``--total-steps``
instead spreads one cosine over several chunked runs (how the CPU phase ran).

It runs on CUDA when there is a GPU (``--device``), else on the CPU. On a
2-core CPU set, as the issue asks:
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736
Example:
    .venv/bin/python scripts/train_embedded.py vae --steps 3000
    .venv/bin/python scripts/train_embedded.py unet --minutes 60
    python scripts/train_embedded.py unet --steps 6000 --batch 512 --pool 131072 --device cuda
    python scripts/train_embedded.py controlnet --steps 3000 --batch 256 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
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

from pipelines.embedded import CONTROLNET_FOLDER, FOLDER, SCHEDULER_CONFIG, build_components, defaults  # noqa: E402
from pipelines.embedded.world import caption, render, sample_scene  # noqa: E402

WORK = Path(os.environ.get("ATELIER_TRAIN_DIR", Path(__file__).resolve().parents[1] / ".train"))
LOG = FOLDER / "training_log.jsonl"
# The thresholds of the Canny edges the ControlNet learns (the studio's Canny preprocessor defaults).
CANNY_LOW, CANNY_HIGH = 100, 200


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

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    staging = FOLDER.with_name(FOLDER.name + ".saving")
    pipe.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    pipe.to(torch.float32)
    card = ("atelier.json", "README.md", "training_log.jsonl", "loss.png")
    evaluations = tuple(path.name for path in FOLDER.glob("evaluation*.json")) + tuple(
        path.name for path in FOLDER.glob("samples*.png")
    )
    for keep in card + evaluations:
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


# -- what the UNet and ControlNet stages share -----------------------------------


def _noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def _render_chunk(seed: int, chunk: int, size: int):
    """One chunk of the pool: scenes, pixels and their Canny edges (a worker process runs this)."""
    import cv2

    rng = np.random.default_rng([seed, 2, chunk])
    scenes = [sample_scene(rng) for _ in range(size)]
    rgb = np.stack([render(s) for s in scenes])
    return scenes, rgb, np.stack([cv2.Canny(image, CANNY_LOW, CANNY_HIGH) for image in rgb])


def _latent_pool(vae, *, seed: int, size: int, device: torch.device, workers: int):
    """A fixed pool of scenes, their latents and Canny edges (encoding each step would cost more than the UNet).

    Chunks are seeded by their index, so any number of worker processes
    builds the same pool.
    """
    import hashlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Keyed by the VAE's weights too: a retrained VAE makes old latents wrong.
    vae_hash = hashlib.sha256((FOLDER / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:12]
    cache = WORK / f"pool-{seed}-{size}-{vae_hash}.pt"
    if cache.is_file():
        return torch.load(cache)
    chunk = 256
    scenes, latents, edges = [], [], []
    count = size // chunk
    # Spawned, not forked: the parent may already hold a CUDA context.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool, torch.no_grad():
        for batch, rgb, batch_edges in pool.map(_render_chunk, [seed] * count, range(count), [chunk] * count):
            scenes.extend(batch)
            pixels = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1
            edges.append(torch.from_numpy(batch_edges))
            latents.append((vae.encode(pixels.to(device)).latent_dist.mean * vae.config.scaling_factor).cpu())
    result = {"scenes": [s.__dict__ for s in scenes], "latents": torch.cat(latents), "edges": torch.cat(edges)}
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save(result, cache)
    return result


class _Captions:
    """Random captions for pool entries, tokenized through a cache (the BPE tokenizer costs ~1 ms a caption)."""

    def __init__(self, tokenizer, scenes) -> None:
        self.tokenizer, self.scenes, self.ids = tokenizer, scenes, {}

    def __call__(self, index: np.ndarray, rng: np.random.Generator, dropout: float) -> torch.Tensor:
        texts = [caption(self.scenes[i], rng) if rng.random() >= dropout else "" for i in index]
        missing = sorted({t for t in texts if t not in self.ids})
        if missing:
            encoded = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            self.ids.update(zip(missing, encoded))
        return torch.stack([self.ids[t] for t in texts])


class _Plan:
    """Learning rate by step: a linear warm-up, then one cosine down to 2% of the peak.

    The cycle is ``steps`` long, fixed before the decay begins; with
    ``minutes`` it is fixed from the speed of the first steps (timed after
    the GPU's first, slow ones).
    """

    WARMUP, PROBE = 200, (20, 60)

    def __init__(self, args, start: int) -> None:
        self.args, self.start = args, start
        self.steps = args.steps
        self.began = time.perf_counter()
        self.deadline = self.began + args.minutes * 60
        self._probe_started = None

    def running(self, step: int) -> bool:
        done = step - self.start
        if done in self.PROBE and torch.cuda.is_available():
            torch.cuda.synchronize()  # time the GPU's work, not how fast steps are queued
        if done == self.PROBE[0]:
            self._probe_started = time.perf_counter()
        if self.steps is None and done == self.PROBE[1]:
            rate = (time.perf_counter() - self._probe_started) / (self.PROBE[1] - self.PROBE[0])
            self.steps = max(self.WARMUP + 1, int(done + (self.deadline - time.perf_counter()) / rate))
            print(json.dumps({"planned_steps": self.steps, "seconds_per_step": round(rate, 4)}), flush=True)
        return done < (self.steps if self.steps is not None else self.WARMUP + 1)

    def factor(self, step: int) -> float:
        done = step - self.start
        warm = min(1.0, (done + 1) / self.WARMUP)
        if self.args.total_steps:  # one cosine over several chunked runs (the CPU phase)
            progress = min(1.0, step / self.args.total_steps)
            return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        if done < self.WARMUP:
            return warm
        progress = min(1.0, (done - self.WARMUP) / max(1, self.steps - self.WARMUP))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


class _Data:
    """What the UNet and ControlNet stages draw batches from: the pool on the device, captions, the noise schedule."""

    def __init__(self, args, vae, tokenizer, device: torch.device) -> None:
        from pipelines.embedded.world import Scene

        self.scheduler = _noise_scheduler()
        self.alphas = self.scheduler.alphas_cumprod.to(device)
        self.pool = _latent_pool(vae, seed=args.seed, size=args.pool, device=device, workers=args.workers)
        self.scenes = [Scene(**s) for s in self.pool["scenes"]]
        self.latents = self.pool["latents"].to(device)
        self.captions = _Captions(tokenizer, self.scenes)


def _update_ema(pairs, decay: float) -> None:
    with torch.no_grad():
        for model, shadow in pairs:
            for p, s in zip(model.parameters(), shadow.parameters()):
                s.lerp_(p, 1 - decay)


def _autocast(device: torch.device):
    # bf16 matrix work on a GPU; fp32 on the CPU, where bf16 is slower.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _diffusion_batch(scheduler, alphas, latents, rng, device, batch):
    noise = torch.randn_like(latents)
    timesteps = torch.from_numpy(rng.integers(0, 1000, size=batch)).long().to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    # Min-SNR weighting (Hang et al. 2023), v-prediction form: no timestep dominates.
    snr = alphas[timesteps] / (1 - alphas[timesteps]).clamp(min=1e-8)
    weight = torch.clamp(snr, max=5.0) / (snr + 1)
    return noisy, timesteps, target, weight


# -- stage 2: UNet and text encoder --------------------------------------------


def train_unet(args) -> None:
    device = torch.device(args.device)
    components = load_components()
    vae, unet, text_encoder, tokenizer = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    for model in (vae, unet, text_encoder):
        model.to(device)
    vae.eval().requires_grad_(False)
    unet.train()
    text_encoder.train()
    data = _Data(args, vae, tokenizer, device)
    scheduler, alphas, scenes, captions, latents_all = (
        data.scheduler,
        data.alphas,
        data.scenes,
        data.captions,
        data.latents,
    )
    optimizer = torch.optim.AdamW(
        [{"params": unet.parameters()}, {"params": text_encoder.parameters()}], lr=args.lr, weight_decay=1e-2
    )
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    state = _read_state()
    start = step = state.get("unet_steps", 0)
    plan = _Plan(args, start)
    losses = []
    while plan.running(step):
        rng = np.random.default_rng([args.seed, 3, step])
        torch.manual_seed(args.seed * 1_000_003 + step)
        index = rng.integers(len(scenes), size=args.batch)
        ids = captions(index, rng, dropout=0.1).to(device)  # 10% unconditional, for guidance
        latents = latents_all[torch.from_numpy(index).to(device)]
        noisy, timesteps, target, weight = _diffusion_batch(scheduler, alphas, latents, rng, device, args.batch)
        with _autocast(device):
            hidden = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, hidden).sample
        loss = (weight * ((prediction.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()
        for group, base in zip(optimizer.param_groups, (args.lr, args.lr * 0.5)):
            group["lr"] = base * plan.factor(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        optimizer.step()
        _update_ema(
            ((unet, ema_unet), (text_encoder, ema_text)), min(args.ema, (1 + step - start) / (10 + step - start))
        )
        losses.append(loss.detach())
        step += 1
        if step % 50 == 0:
            log(
                "unet",
                step=step,
                loss=round(torch.stack(losses).mean().item(), 5),
                batch=args.batch,
                device=device.type,
                seconds=round(time.perf_counter() - plan.began, 1),
            )
            losses = []
        if step % args.save_every == 0:
            _save_unet(components, ema_unet, ema_text, state, step)
    _save_unet(components, ema_unet, ema_text, state, step)


def _save_unet(components, ema_unet, ema_text, state, step) -> None:
    exported = dict(components)
    exported["unet"], exported["text_encoder"] = copy.deepcopy(ema_unet).cpu(), copy.deepcopy(ema_text).cpu()
    exported["vae"] = copy.deepcopy(components["vae"]).cpu()
    from diffusers import EulerDiscreteScheduler

    exported["scheduler"] = EulerDiscreteScheduler.from_config(_noise_scheduler().config)
    state["unet_steps"] = step
    _write_state(state)
    save(exported, note=f"unet after {step} steps")


# -- stage 3: ControlNet on Canny edges ------------------------------------------


def train_controlnet(args) -> None:
    """A ControlNet copied from the trained UNet's encoder, taught to follow Canny edges; the base stays frozen."""
    from diffusers import ControlNetModel

    device = torch.device(args.device)
    components = load_components()
    vae, unet, text_encoder, tokenizer = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    for model in (vae, unet, text_encoder):
        model.to(device).eval().requires_grad_(False)
    if (CONTROLNET_FOLDER / "config.json").is_file():
        controlnet = ControlNetModel.from_pretrained(CONTROLNET_FOLDER, dtype=torch.float32)
        print("resuming from", CONTROLNET_FOLDER, flush=True)
    else:
        # Two stride-2 stages take the 64x64 edges to the 16x16 latent grid (the VAE's factor is 4, not 8).
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))
    controlnet.to(device).train()
    data = _Data(args, vae, tokenizer, device)
    scheduler, alphas, scenes, captions, latents_all = (
        data.scheduler,
        data.alphas,
        data.scenes,
        data.captions,
        data.latents,
    )
    edges_all = data.pool["edges"].to(device)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=1e-2)
    ema = copy.deepcopy(controlnet).eval()
    state = _read_state()
    start = step = state.get("controlnet_steps", 0)
    plan = _Plan(args, start)
    losses = []
    while plan.running(step):
        rng = np.random.default_rng([args.seed, 4, step])
        torch.manual_seed(args.seed * 1_000_003 + step)
        index = rng.integers(len(scenes), size=args.batch)
        # Half the captions dropped: the edges alone must be enough to place the shape.
        ids = captions(index, rng, dropout=0.5).to(device)
        where = torch.from_numpy(index).to(device)
        latents = latents_all[where]
        control = (
            (edges_all[where].float() / 255).unsqueeze(1).expand(-1, 3, -1, -1)
        )  # [0, 1], as the pipeline feeds it
        noisy, timesteps, target, weight = _diffusion_batch(scheduler, alphas, latents, rng, device, args.batch)
        with torch.no_grad(), _autocast(device):
            hidden = text_encoder(ids)[0]
        with _autocast(device):
            down, mid = controlnet(
                noisy, timesteps, encoder_hidden_states=hidden, controlnet_cond=control, return_dict=False
            )
            prediction = unet(
                noisy, timesteps, hidden, down_block_additional_residuals=down, mid_block_additional_residual=mid
            ).sample
        loss = (weight * ((prediction.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in optimizer.param_groups:
            group["lr"] = args.lr * plan.factor(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        _update_ema(((controlnet, ema),), min(args.ema, (1 + step - start) / (10 + step - start)))
        losses.append(loss.detach())
        step += 1
        if step % 50 == 0:
            log(
                "controlnet",
                step=step,
                loss=round(torch.stack(losses).mean().item(), 5),
                batch=args.batch,
                device=device.type,
                seconds=round(time.perf_counter() - plan.began, 1),
            )
            losses = []
        if step % args.save_every == 0:
            _save_controlnet(ema, state, step)
    _save_controlnet(ema, state, step)


def _save_controlnet(ema, state, step) -> None:
    import shutil

    staging = CONTROLNET_FOLDER.with_name(CONTROLNET_FOLDER.name + ".saving")
    copy.deepcopy(ema).cpu().to(torch.float16).save_pretrained(staging, safe_serialization=True)
    if CONTROLNET_FOLDER.exists():
        shutil.rmtree(CONTROLNET_FOLDER)
    os.replace(staging, CONTROLNET_FOLDER)
    state["controlnet_steps"] = step
    _write_state(state)
    print("saved controlnet after", step, "steps", flush=True)


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
    stages = [stage for stage in ("vae", "unet", "controlnet") if any(r["stage"] == stage for r in rows)]
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
        xy = [
            (x0 + (s - min(steps)) / span_x * (x1 - x0), y1 - (v - low) / span_y * (y1 - y0))
            for s, v in zip(steps, logs)
        ]
        draw.rectangle((x0, y0, x1, y1), outline=(180, 180, 180))
        draw.line(xy, fill=(30, 60, 220), width=2)
        draw.text((x0, 4), f"{stage}: loss {10**high:.3g} -> {10 ** logs[-1]:.3g} (log scale)", fill="black")
        draw.text((x0, y1 + 6), f"step {min(steps)}", fill="black")
        draw.text((x1 - 70, y1 + 6), f"step {max(steps)}", fill="black")
    sheet.save(FOLDER / "loss.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["vae", "unet", "controlnet", "plot"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=1e9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=24_576, help="scenes encoded once for UNet training")
    parser.add_argument("--total-steps", type=int, default=None, help="one cosine over several chunked runs")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes that render the pool")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Tiny EMA and weight updates can go subnormal, which CPUs compute very slowly.
    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    FOLDER.mkdir(parents=True, exist_ok=True)
    if args.stage == "plot":
        plot_loss()
    elif args.stage == "vae":
        args.lr = args.lr or 1e-3
        args.steps = args.steps or 2000
        train_vae(args)
    elif args.stage == "unet":
        args.lr = args.lr or 4e-4
        train_unet(args)
    else:
        args.lr = args.lr or 3e-4
        train_controlnet(args)


if __name__ == "__main__":
    main()
