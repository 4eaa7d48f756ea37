"""The studio's own work per job in a GPU pool: is one studio process a bottleneck?

With ``ATELIER_EXECUTOR=ray`` a job's pixels are made on a replica; the
studio's part is the queue's rows and the result's files. This times that
part alone, per job, as the studio does it for a pool job: enqueue the
request (a row), claim it (the fair order, a lease), decode the result's
PNG as it comes off the wire, and `finish` (PNG with its metadata,
thumbnail, sha256, fsync, rows, one commit). The image is a smooth gradient
with mild noise, which compresses about as a generated picture does.

Nothing here imports torch. Run from the repo root:
    .venv/bin/python benchmarks/bench_studio_share.py [--jobs 30] [--sizes 64 512 1024]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageChops  # noqa: E402

from storage.gallery import Gallery  # noqa: E402
from storage.records import ImageInput, NewGeneration  # noqa: E402


def picture(size: int, seed: int) -> bytes:
    """A generated-looking image as a replica sends it: PNG bytes, compress level 1."""
    gradient = Image.radial_gradient("L").resize((size, size)).convert("RGB")
    noise = Image.effect_noise((size, size), 24).convert("RGB")
    image = ImageChops.add(gradient, noise, scale=1.0, offset=seed % 7)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def new_generation(size: int, seed: int) -> NewGeneration:
    params = {
        "task": "txt2img",
        "model": "embedded",
        "prompt": "a red circle on a blue background",
        "negative_prompt": "",
        "seed": seed,
        "sampler": "Euler",
        "num_inference_steps": 30,
        "guidance_scale": 5.0,
        "width": size,
        "height": size,
        "batch_size": 1,
    }
    return NewGeneration.from_params(params, user=f"user{seed % 4}")


def per_job_ms(gallery: Gallery, size: int, jobs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of each job (the wall includes waiting for fsync; the CPU is what a core gives)."""
    wires = [picture(size, seed) for seed in range(jobs)]
    walls, cpus = [], []
    for seed, wire in enumerate(wires):
        began, began_cpu = time.perf_counter(), time.thread_time()
        gallery.enqueue(new_generation(size, seed))
        record = gallery.claim_next()
        with Image.open(io.BytesIO(wire)) as file:
            image = file.copy()
        gallery.finish(
            record.id,
            images=[ImageInput(role="output", image=image, seed=seed)],
            environment={"device": "cuda", "node": "gpu-1", "replica": "abc"},
            timings={},
            duration_ms=4000,
        )
        walls.append((time.perf_counter() - began) * 1000)
        cpus.append((time.thread_time() - began_cpu) * 1000)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 1024])
    args = parser.parse_args()
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            data = Path(folder) / str(size)
            data.mkdir()
            with Gallery(url=f"sqlite:///{data / 'gallery.db'}", data_dir=data, lease_seconds=60) as gallery:
                per_job_ms(gallery, size, 3)  # the schema, the first files: not a job's cost
                walls, cpus = per_job_ms(gallery, size, args.jobs)
            report[f"{size}x{size}"] = {
                "wall_ms_median": round(statistics.median(walls), 1),
                "wall_ms_p90": round(sorted(walls)[int(0.9 * len(walls))], 1),
                "cpu_ms_median": round(statistics.median(cpus), 1),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
