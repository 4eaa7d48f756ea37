"""Issue 20's edge metric before and after matting, and what matting costs beside a generation.

    .venv/bin/python benchmarks/bench_matting.py [--sizes 128 512 1024 2048] [--generate 512]

The edge metric: on synthetic studio shots (tests/pipelines/conftest.py: a
bottle and a tin, anti-aliased, on white, grey and teal backdrops; the
larger ones lens-softened), the median RGB distance between the result and
the new background on the 2-pixel ring just outside the true product, over
four new backgrounds. "before" is the path the issue measured: GrabCut's mask
as it was (unrefined) pasted back with a 4 px feather; "refined" is the
refined mask pasted back the old way; "matted" is the new path. At the
lens-softened sizes the true edge itself reaches into the ring, so "ideal"
(the photo composited with its true coverage) is printed beside it.

Timing: the matte of the found mask (median of 3) per megapixel, and one
embedded-model product background at ``--generate`` pixels (20 steps, this
CPU) against the matte of that same photo, in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import masks, matting  # noqa: E402
from pipelines.limits import DEFAULT_MATTE_BAND  # noqa: E402

_spec = importlib.util.spec_from_file_location("product_photos", ROOT / "tests" / "pipelines" / "conftest.py")
photos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(photos)

NEW_BACKGROUNDS = {"purple": (120, 40, 160), "black": (5, 5, 5), "orange": (240, 140, 20), "green": (30, 170, 60)}


def unrefined_mask(photo: Image.Image) -> np.ndarray:
    """GrabCut's mask as it was before issue 20 (its edge refinement switched off for this call)."""
    refine = matting.refine
    matting.refine = lambda image, product, band: product
    try:
        return np.asarray(masks.product_mask(photo, "grabcut")[0]) > 127
    finally:
        matting.refine = refine


def edges(size: int) -> dict[str, float]:
    blur = 0.0 if size <= 512 else size / 1024
    figures: dict[str, list[float]] = {"before": [], "refined": [], "matted": [], "ideal": []}
    for backdrop in photos.STUDIO_BACKDROPS.values():
        photo, coverage = photos.product_photo(size, backdrop, blur=blur)
        old = unrefined_mask(photo)
        new = np.asarray(masks.product_mask(photo, "grabcut")[0]) > 127
        matte = matting.matte_of(photo, new, DEFAULT_MATTE_BAND)
        truth = matting.Matte(alpha=coverage.astype(np.float32), foreground=np.asarray(photo, np.float32))
        for colour in NEW_BACKGROUNDS.values():
            generated = photos.new_background(size, colour)
            shot = Image.fromarray(generated)
            results = {
                "before": masks.paste_back(photo, shot, masks.background_mask(masks._to_mask(old)), feather=4),
                "refined": masks.paste_back(photo, shot, masks.background_mask(masks._to_mask(new)), feather=4),
                "matted": matting.over(photo, shot, matte),
                "ideal": matting.composite(photo, generated, truth),
            }
            for name, result in results.items():
                figures[name].append(photos.ring_distance(result, generated, coverage))
    return {name: statistics.median(values) for name, values in figures.items()}


def matte_seconds(size: int) -> float:
    photo, _ = photos.product_photo(size, photos.STUDIO_BACKDROPS["white"], blur=0.0 if size <= 512 else size / 1024)
    product = np.asarray(masks.product_mask(photo, "grabcut")[0]) > 127
    times = []
    for _ in range(3):
        started = time.perf_counter()
        matting.matte_of(photo, product, DEFAULT_MATTE_BAND)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def generation_seconds(size: int) -> tuple[float, float]:
    """(one product background's seconds, the matte's share of them) at ``size`` pixels."""
    from pipelines.engine import Engine
    from pipelines.requests import ImageRef, InpaintRequest

    photo, _ = photos.product_photo(size, photos.STUDIO_BACKDROPS["white"])
    product, _ = masks.product_mask(photo)
    request = InpaintRequest(
        prompt="a red circle on a purple background",
        image=ImageRef.of(photo),
        mask_image=ImageRef.of(masks.background_mask(product)),
        num_inference_steps=20,
        seed=1,
    )
    engine = Engine()
    engine.run(request.replace(num_inference_steps=1))  # load and warm up
    started = time.perf_counter()
    engine.run(request)
    return time.perf_counter() - started, matte_seconds(size)


def closeup(path: Path) -> None:
    """Before | after, 8x: the bottle's shoulder on purple, from a 128 px shot on white."""
    photo, _ = photos.product_photo(128, photos.STUDIO_BACKDROPS["white"])
    shot = Image.fromarray(photos.new_background(128, NEW_BACKGROUNDS["purple"]))
    old = masks.paste_back(photo, shot, masks.background_mask(masks._to_mask(unrefined_mask(photo))), feather=4)
    new = np.asarray(masks.product_mask(photo, "grabcut")[0]) > 127
    after = matting.over(photo, shot, matting.matte_of(photo, new, DEFAULT_MATTE_BAND))
    box = (40, 36, 72, 68)  # the neck's and body's left shoulder
    pair = Image.new("RGB", (2 * 32 * 8 + 8, 32 * 8), (255, 255, 255))
    for index, image in enumerate((old, after)):
        pair.paste(image.crop(box).resize((256, 256), Image.Resampling.NEAREST), (index * (256 + 8), 0))
    pair.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024, 2048])
    parser.add_argument("--generate", type=int, default=512, help="photo size of the timed generation (0: skip)")
    parser.add_argument("--closeup", type=Path, help="also save a before | after close-up of an edge here")
    args = parser.parse_args()
    if args.closeup:
        closeup(args.closeup)
    print("size   before  refined  matted  ideal   (median ring distance, 3 backdrops x 4 backgrounds)")
    for size in args.sizes:
        figures = edges(size)
        print(
            f"{size:5d}  {figures['before']:6.1f}  {figures['refined']:7.1f}  {figures['matted']:6.1f}  {figures['ideal']:5.1f}"
        )
    for size in args.sizes:
        seconds = matte_seconds(size)
        print(f"matte at {size}x{size}: {seconds * 1000:.1f} ms, {seconds / (size * size / 1e6):.3f} s per megapixel")
    if args.generate:
        generation, matte = generation_seconds(args.generate)
        print(
            f"generation at {args.generate}x{args.generate} (embedded, 20 steps, CPU): {generation:.2f} s; "
            f"its matte {matte * 1000:.1f} ms = {matte / generation:.4f} of it"
        )


if __name__ == "__main__":
    main()
