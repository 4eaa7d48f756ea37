"""Does the embedded model draw what it is asked? (issue 3's evaluation)

``--task txt2img`` (the default): 96 prompt/seed pairs, each "a <colour>
<shape> on a <background> background", run through the engine at the model
card's default steps, sampler and guidance, and read back by the pixel
classifier in ``pipelines/embedded/world.py`` (background from the border,
shape colour from the pixels far from it, shape from the fill ratio of its
bounding box). Targets: background >= 95%, shape colour >= 90%, shape >= 85%.

``--task inpaint``: a drawn scene, its shape kept by a mask (every pixel that
is not the background's colour), a prompt asking for another background.
Targets: the new colour >= 90%, the shape's pixels bit-exact.

``--task controlnet``: the Canny edges of a drawn scene steer a prompt that
names only the colours and the shape; the edges of the output are compared
with the control edges (IoU, each edge map thickened to 3 px so a one-pixel
shift is not a miss), with the embedded ControlNet and without it (same
prompt and seed, plain text-to-image).

    .venv/bin/python benchmarks/eval_embedded.py [--task txt2img] [--pairs 96] [--sheet samples.png] [--json out.json]
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
from pipelines.embedded.world import COLOURS, SHAPES, classify, render, sample_scene
from pipelines.engine import Engine
from pipelines.requests import ControlNetRequest, ControlUnit, ImageRef, InpaintRequest, Text2ImgRequest


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


def _settings() -> dict:
    defaults = embedded.defaults()
    return {
        "num_inference_steps": defaults["num_inference_steps"],
        "guidance_scale": defaults["guidance_scale"],
        "sampler": defaults["sampler"],
    }


def evaluate_inpaint(count: int):
    """Keep the drawn shape, ask for a new background: is it the new colour, and is the shape untouched?"""
    engine, rng = Engine(), np.random.default_rng(4321)
    rows, images = [], []
    started = time.perf_counter()
    for _ in range(count):
        scene = sample_scene(rng)
        photo = render(scene)
        kept = np.any(photo != np.array(COLOURS[scene.background], dtype=np.uint8), axis=2)
        new = str(rng.choice([n for n in COLOURS if n not in (scene.colour, scene.background)]))
        request = InpaintRequest(
            prompt=f"a {scene.colour} {scene.shape} on a {new} background",
            image=ImageRef.of(Image.fromarray(photo)),
            mask_image=ImageRef.of(Image.fromarray(np.where(kept, 0, 255).astype(np.uint8))),
            seed=int(rng.integers(2**31)),
            **_settings(),
        )
        image = engine.run(request).images[0]
        output = np.asarray(image)
        reading = classify(image)
        rows.append(
            {
                "prompt": request.prompt,
                "seed": request.seed,
                "background": reading.background == new,
                "exact": bool(np.array_equal(output[kept], photo[kept])),
                "read": [reading.background, reading.colour, reading.shape],
            }
        )
        images.append(image)
    seconds = (time.perf_counter() - started) / count
    return {key: sum(r[key] for r in rows) / count for key in ("background", "exact")}, rows, images, seconds


def edge_iou(image, control: np.ndarray) -> float:
    """IoU of two Canny edge maps, each thickened by one pixel (3x3) so a one-pixel shift still counts."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    ours = cv2.dilate(cv2.Canny(np.asarray(image.convert("RGB")), 100, 200), kernel) > 0
    theirs = cv2.dilate(control, kernel) > 0
    union = (ours | theirs).sum()
    return float((ours & theirs).sum() / union) if union else 1.0


def evaluate_controlnet(count: int):
    """Do the output's edges follow the control edges, with the ControlNet and without it?"""
    import cv2

    engine, rng = Engine(), np.random.default_rng(2468)
    rows, images = [], []
    started = time.perf_counter()
    for _ in range(count):
        scene = sample_scene(rng)
        drawn = render(scene)
        edges = cv2.Canny(drawn, 100, 200)
        prompt = f"a {scene.colour} {scene.shape} on a {scene.background} background"
        seed = int(rng.integers(2**31))
        steered = engine.run(
            ControlNetRequest(
                prompt=prompt,
                seed=seed,
                controls=(ControlUnit(image=ImageRef.of(Image.fromarray(drawn))),),
                **_settings(),
            )
        ).images[0]
        free = engine.run(Text2ImgRequest(prompt=prompt, seed=seed, width=64, height=64, **_settings())).images[0]
        reading = classify(steered)
        rows.append(
            {
                "prompt": prompt,
                "seed": seed,
                "iou_controlnet": edge_iou(steered, edges),
                "iou_without": edge_iou(free, edges),
                "shape": reading.shape == scene.shape,
                "colour": reading.colour == scene.colour,
            }
        )
        images.append(steered)
    seconds = (time.perf_counter() - started) / count / 2
    scores = {
        key: float(np.mean([r[key] for r in rows])) for key in ("iou_controlnet", "iou_without", "shape", "colour")
    }
    return scores, rows, images, seconds


def contact_sheet(images, rows, path: Path, columns: int = 12) -> None:
    """Each image with a green (right) or red (wrong) bar per check: background, colour, shape."""
    side = images[0].width * 2
    sheet = Image.new("RGB", (columns * side, ((len(images) + columns - 1) // columns) * (side + 6)), "white")
    for i, (image, row) in enumerate(zip(images, rows)):
        x, y = (i % columns) * side, (i // columns) * (side + 6)
        sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (x, y))
        draw = ImageDraw.Draw(sheet)
        keys = [key for key in ("background", "colour", "shape", "exact") if key in row]
        for j, key in enumerate(keys):
            fill = (40, 170, 70) if row[key] else (220, 40, 40)
            width = side // len(keys)
            draw.rectangle((x + j * width, y + side, x + (j + 1) * width - 2, y + side + 4), fill=fill)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["txt2img", "inpaint", "controlnet"], default="txt2img")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler")
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.task == "inpaint":
        scores, rows, images, seconds = evaluate_inpaint(args.pairs)
        print(
            f"{args.pairs} pairs: new background {scores['background']:.1%}, shape pixels exact {scores['exact']:.1%}; "
            f"{seconds:.2f} s per image"
        )
    elif args.task == "controlnet":
        scores, rows, images, seconds = evaluate_controlnet(args.pairs)
        print(
            f"{args.pairs} pairs: edge IoU {scores['iou_controlnet']:.3f} with the ControlNet, "
            f"{scores['iou_without']:.3f} without; shape {scores['shape']:.1%}, colour {scores['colour']:.1%}; "
            f"{seconds:.2f} s per image"
        )
    else:
        scores, rows, images, seconds = evaluate(
            args.pairs, steps=args.steps, sampler=args.sampler, guidance=args.guidance
        )
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
