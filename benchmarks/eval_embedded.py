"""Does the embedded model draw what it is asked? (issue 3's evaluation)

96 prompt/seed pairs, each "a <colour> <shape> on a <background> background",
run through the engine at the model card's default steps, sampler and
guidance, and read back by the pixel classifier in ``pipelines/embedded/world.py``
(background from the border, shape colour from the pixels far from it, shape
from the fill ratio of its bounding box).

    .venv/bin/python benchmarks/eval_embedded.py [--pairs 96] [--sheet samples.png] [--json out.json]

Targets: background >= 95%, shape colour >= 90%, shape >= 85%.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipelines import embedded
from pipelines.embedded.world import COLOURS, SHAPES, classify
from pipelines.engine import Engine
from pipelines.requests import Text2ImgRequest


def prompts(count: int, seed: int = 1234) -> list[tuple[str, str, str, int]]:
    """(shape, colour, background, seed), balanced over shapes and colours."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    pairs = []
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        colour = names[i % len(names)]
        background = rng.choice([n for n in names if n != colour])
        pairs.append((shape, colour, str(background), int(rng.integers(2**31))))
    return pairs


def evaluate(count: int, *, steps: int | None = None, sampler: str | None = None, guidance: float | None = None):
    defaults = embedded.defaults()
    engine = Engine()
    rows, images = [], []
    started = time.perf_counter()
    for shape, colour, background, seed in prompts(count):
        request = Text2ImgRequest(
            prompt=f"a {colour} {shape} on a {background} background",
            seed=seed,
            width=defaults["width"],
            height=defaults["height"],
            num_inference_steps=steps or defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"] if guidance is None else guidance,
            sampler=sampler or defaults["sampler"],
        )
        image = engine.run(request).images[0]
        reading = classify(image)
        rows.append(
            {
                "prompt": request.prompt,
                "seed": seed,
                "background": reading.background == background,
                "colour": reading.colour == colour,
                "shape": reading.shape == shape,
                "read": [reading.background, reading.colour, reading.shape],
            }
        )
        images.append(image)
    seconds = (time.perf_counter() - started) / count
    scores = {key: sum(r[key] for r in rows) / count for key in ("background", "colour", "shape")}
    return scores, rows, images, seconds


def contact_sheet(images, rows, path: Path, columns: int = 12) -> None:
    """Each image with a green (right) or red (wrong) bar per check: background, colour, shape."""
    side = images[0].width * 2
    sheet = Image.new("RGB", (columns * side, ((len(images) + columns - 1) // columns) * (side + 6)), "white")
    for i, (image, row) in enumerate(zip(images, rows)):
        x, y = (i % columns) * side, (i // columns) * (side + 6)
        sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (x, y))
        draw = ImageDraw.Draw(sheet)
        for j, key in enumerate(("background", "colour", "shape")):
            fill = (40, 170, 70) if row[key] else (220, 40, 40)
            draw.rectangle((x + j * side // 3, y + side, x + (j + 1) * side // 3 - 2, y + side + 4), fill=fill)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler")
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores, rows, images, seconds = evaluate(args.pairs, steps=args.steps, sampler=args.sampler, guidance=args.guidance)
    print(
        f"{args.pairs} pairs: background {scores['background']:.1%}, shape colour {scores['colour']:.1%}, "
        f"shape {scores['shape']:.1%}; {seconds:.2f} s per image"
    )
    if args.sheet:
        contact_sheet(images, rows, args.sheet)
    if args.json:
        args.json.write_text(json.dumps({"scores": scores, "seconds_per_image": seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
