"""Live previews' cost: images with a preview every k steps against the same images without.

Both arms call the embedded model's pipeline the engine uses, with a
step-end callback (the engine always has one, for progress and cancel), on
the same seeds; only the preview arm taps the sampler's x0 estimate and
turns it into a PIL image every k steps (through ``PreviewPacer``, which
also keeps previews within ``--budget`` of the time; ``--budget 1`` turns
that limit off), kept as the UI would keep it. The two arms run in pairs on
one seed, next to each other, alternating which goes first, so machine
drift hits both alike. CPU time is reported beside wall time: on a shared
machine other processes' work lands in wall time only.

    .venv/bin/python benchmarks/bench_previews.py [--images 4] [--every 5] [--budget 0.04] [--rounds 10] [--method auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from pipelines import embedded
from pipelines.engine import Engine
from pipelines.previews import BUDGET, METHODS, DenoisedTap, LatentPreviewer, PreviewPacer
from pipelines.samplers import make_scheduler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4, help="seeds, each run with and without previews per round")
    parser.add_argument("--every", type=int, default=5, help="a preview every this many steps")
    parser.add_argument("--budget", type=float, default=BUDGET, help="previews' share of the time at most; 1: no limit")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--method", choices=METHODS, default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    engine = Engine(device=args.device)
    pipe = engine.pipeline("embedded", "txt2img")
    started = time.perf_counter()
    previewer = LatentPreviewer.for_pipeline(pipe, method=args.method)
    built_ms = (time.perf_counter() - started) * 1000
    defaults = embedded.defaults()
    preview_ms: list[float] = []
    counts = {"made": 0, "skipped": 0}

    def run(seed: int, previews: bool) -> None:
        pipe.scheduler = make_scheduler(defaults["sampler"], engine.load("embedded").base.scheduler.config)
        tap = DenoisedTap(pipe.scheduler) if previews else None
        pacer = PreviewPacer(every=args.every, budget=args.budget)
        shown = []

        def timed_preview(latents):
            begun = time.perf_counter()
            image = previewer.preview(latents)
            preview_ms.append((time.perf_counter() - begun) * 1000)
            return image

        def on_step_end(pipeline, step, timestep, tensors):
            if tap is not None:
                latents = tap.latest if tap.latest is not None else tensors["latents"]
                image = pacer.maybe(step, pipeline.num_timesteps, lambda: timed_preview(latents))
                if image is not None:
                    shown.append(image)
            return tensors

        pipe(
            defaults["prompt"],
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            width=defaults["width"],
            height=defaults["height"],
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=on_step_end,
        )
        if previews:
            counts["made"] += pacer.made
            counts["skipped"] += pacer.skipped

    def timed(seed: int, previews: bool) -> tuple[float, float]:
        """(wall, CPU) seconds for one image. CPU time is what this process used, so
        other work on a shared machine does not count; on a GPU only wall time means much."""
        wall, cpu = time.perf_counter(), time.process_time()
        run(seed, previews)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    for seed in range(2):  # warm-up: first calls allocate and fill caches
        timed(seed, False), timed(seed, True)
    preview_ms.clear()
    counts.update(made=0, skipped=0)
    plain, previewed = [], []
    # Pairs on the same seed, next to each other in time, alternating which goes first.
    for index in range(args.rounds * args.images):
        seed = index % args.images
        if index % 2:
            plain.append(timed(seed, False)), previewed.append(timed(seed, True))
        else:
            previewed.append(timed(seed, True)), plain.append(timed(seed, False))

    print(f"device {engine.device.type} ({engine.dtype}), threads {torch.get_num_threads()}")
    print(f"previewer: {previewer.kind}, built in {built_ms:.0f} ms; {previewer.note}")
    print(
        f"{len(plain)} image pairs ({args.images} seeds) x {defaults['num_inference_steps']} steps at "
        f"{defaults['width']}x{defaults['height']}, a preview every {args.every} steps within {args.budget:.0%} of the time"
    )
    images = len(previewed)
    print(
        f"one preview: median {statistics.median(preview_ms):.2f} ms; {counts['made'] / images:.1f} previews per image, "
        f"{counts['skipped'] / images:.1f} skipped for the budget"
    )
    for clock, column in (("wall", 0), ("CPU", 1)):
        without = statistics.median(t[column] for t in plain)
        with_ = statistics.median(t[column] for t in previewed)
        pairs = statistics.median(p[column] / q[column] for p, q in zip(previewed, plain))
        print(
            f"{clock} time per image, median: without {without * 1000:.0f} ms, with {with_ * 1000:.0f} ms; "
            f"ratio {with_ / without:.3f} (median of pair ratios {pairs:.3f})"
        )
    estimate = counts["made"] / images * statistics.median(preview_ms) / 1000 / statistics.median(t[1] for t in plain)
    print(f"previews' measured time over the image's CPU time: {estimate:.1%}")


if __name__ == "__main__":
    main()
