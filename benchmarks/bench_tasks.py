"""Seconds per image of each task, and the peak memory of a session using all four against text-to-image alone.

Each scenario runs in its own process (peak resident memory is per process),
on the embedded model at its defaults, one CPU thread:

    .venv/bin/python benchmarks/bench_tasks.py [--images 6]

``txt2img-only`` makes text-to-image images; ``all-four`` makes the same
number of each of the four tasks in turn on one engine, so the second
number is what sharing one set of weights costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _requests(task: str, index: int):
    import numpy as np
    from PIL import Image

    from pipelines.embedded.world import COLOURS, Scene, render
    from pipelines.requests import (
        ControlNetRequest,
        ControlUnit,
        ImageRef,
        Img2ImgRequest,
        InpaintRequest,
        Text2ImgRequest,
    )

    settings = {"num_inference_steps": 20, "guidance_scale": 5.0, "seed": index}
    photo = Image.fromarray(render(Scene("square", "red", "blue", 0.22, 0.5, 0.5)))
    kept = np.any(np.asarray(photo) != np.array(COLOURS["blue"], dtype=np.uint8), axis=2)
    mask = Image.fromarray(np.where(kept, 0, 255).astype(np.uint8))
    if task == "txt2img":
        return Text2ImgRequest(prompt="a red square on a yellow background", width=64, height=64, **settings)
    if task == "img2img":
        return Img2ImgRequest(
            prompt="a red square on a yellow background", image=ImageRef.of(photo), strength=0.8, **settings
        )
    if task == "inpaint":
        return InpaintRequest(
            prompt="a red square on a yellow background",
            image=ImageRef.of(photo),
            mask_image=ImageRef.of(mask),
            **settings,
        )
    return ControlNetRequest(
        prompt="a red square on a yellow background", controls=(ControlUnit(image=ImageRef.of(photo)),), **settings
    )


def scenario(name: str, images: int) -> dict:
    import torch

    from pipelines.engine import Engine

    torch.set_num_threads(1)
    tasks = ["txt2img"] if name == "txt2img-only" else ["txt2img", "img2img", "inpaint", "controlnet"]
    engine = Engine()
    engine.run(_requests("txt2img", 0))  # load and warm up
    seconds: dict[str, list[float]] = {task: [] for task in tasks}
    for index in range(1, images + 1):
        for task in tasks:
            started = time.perf_counter()
            engine.run(_requests(task, index))
            seconds[task].append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "scenario": name,
        "device": engine.environment()["device_name"],
        "loads": engine.loads,
        "peak_mib": round(peak_mib, 1),
        "seconds_per_image": {task: round(statistics.median(values), 3) for task, values in seconds.items()},
    }
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--scenario")
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(scenario(args.scenario, args.images)))
        return
    results = []
    for name in ("txt2img-only", "all-four"):
        out = subprocess.run(
            [sys.executable, __file__, "--scenario", name, "--images", str(args.images)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for result in results:
        print(json.dumps(result))
    alone, together = results
    print(
        f"peak memory, all four tasks / text-to-image alone: {together['peak_mib']:.0f} / {alone['peak_mib']:.0f} MiB "
        f"= {together['peak_mib'] / alone['peak_mib']:.2f}; base-model loads: {together['loads']}"
    )
    if "peak_gpu_mib" in together:
        print(
            f"peak GPU memory, all four / text-to-image alone: {together['peak_gpu_mib']:.0f} / {alone['peak_gpu_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
