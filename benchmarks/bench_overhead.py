"""Studio end-to-end time per image against the bare diffusers call.

Both run side by side in one process, interleaved, on the embedded model at
its default size and steps, so machine noise hits both alike. The studio's
time is everything `Studio.submit` does: validation, a running record, the
engine (scheduler, embedding cache, generators, progress), PNG encoding with
metadata, thumbnail, sha256, fsync and the commit.

    .venv/bin/python benchmarks/bench_overhead.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from pipelines import embedded
from pipelines.requests import Text2ImgRequest
from pipelines.samplers import make_scheduler
from webui.settings import Settings
from webui.studio import Studio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as data:
        studio = Studio.from_settings(Settings(data_dir=Path(data), user="bench"))
        defaults = embedded.defaults()
        request = Text2ImgRequest(
            prompt=defaults["prompt"],
            width=defaults["width"],
            height=defaults["height"],
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            sampler=defaults["sampler"],
        )
        pipe = studio.engine.pipeline("embedded", "txt2img")

        def bare(seed: int) -> float:
            started = time.perf_counter()
            pipe.scheduler = make_scheduler(request.sampler, pipe.scheduler.config)
            pipe(
                request.prompt,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                generator=torch.Generator("cpu").manual_seed(seed),
            )
            return time.perf_counter() - started

        def studio_run(seed: int) -> float:
            started = time.perf_counter()
            studio.submit(request.replace(seed=seed), user="bench")
            return time.perf_counter() - started

        for seed in range(2):  # warm-up: first calls allocate and fill caches
            bare(seed), studio_run(seed)
        bare_times, studio_times = [], []
        for seed in range(args.rounds):
            # Alternate which goes first so drift does not favour either.
            if seed % 2:
                bare_times.append(bare(seed)), studio_times.append(studio_run(seed))
            else:
                studio_times.append(studio_run(seed)), bare_times.append(bare(seed))
        studio.close()

    bare_median, studio_median = statistics.median(bare_times), statistics.median(studio_times)
    ratios = [s / b for s, b in zip(studio_times, bare_times)]
    print(
        f"embedded model, {request.width}x{request.height}, {request.num_inference_steps} steps, "
        f"{request.sampler}, {args.threads} thread(s), {args.rounds} rounds"
    )
    print(f"bare pipeline call : median {bare_median * 1000:7.1f} ms per image")
    print(f"studio.submit      : median {studio_median * 1000:7.1f} ms per image")
    print(
        f"ratio studio/bare  : {studio_median / bare_median:.3f} (median of per-round ratios {statistics.median(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
