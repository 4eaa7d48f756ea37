"""Gallery reads at 1,000 and at 100,000 generations, side by side in one run.

Fills two fresh SQLite galleries in a temporary folder with the same synthetic
generations (the small one is the first rows of the large one): prompts drawn
from a word list, one output image each (a few dozen real content-addressed
files shared by every row, with thumbnails), stars, reviews, tags and boards
in plausible proportions. Then it times, interleaved so machine noise hits
both sizes alike, what the gallery page does, each returning a full page of
50 at both sizes:

- the first page, newest first;
- a filtered page (task and starred);
- a text search, ranked (one word, in about 8% of prompts);
- a deep page: 50 rows from the middle of the gallery (page 1,000 at 100k),
  reached by a keyset cursor;
- opening one record (`get`);

and, for information, a narrow text search (two words: 2 matches at 1k, so a
page of 2 records there against 50 at 100k) and the `count` the gallery tab
shows beside each page (a count reads every matching row, so it grows with
the gallery).

Reports the median of `--repeats` runs in ms and the ratio large / small.
Nothing here imports torch.

    .venv/bin/python benchmarks/bench_gallery.py [--sizes 1000 100000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import Gallery  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.models import Board, BoardItem, Generation, Image, Tag  # noqa: E402

PAGE = 50
TEXT = "sunset"
NARROW = "castle sunset"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

QUALITY = ["masterpiece", "best quality", "highly detailed", "8k", "photorealistic", "sharp focus", "intricate"]
ADJECTIVES = [
    "ancient", "misty", "golden", "ruined", "floating", "neon", "quiet", "enormous", "tiny", "crystal",
    "overgrown", "frozen", "burning", "hidden", "majestic", "cozy", "haunted", "futuristic", "rustic", "serene",
]  # fmt: skip
SUBJECTS = [
    "castle", "dragon", "fox", "lighthouse", "samurai", "robot", "cathedral", "forest", "city", "astronaut",
    "cottage", "owl", "knight", "wizard", "tiger", "ship", "garden", "temple", "mountain", "waterfall",
    "portrait of a woman", "portrait of an old man", "cat", "wolf", "train station", "library", "market",
    "bridge", "tower", "windmill", "airship", "whale", "deer", "phoenix", "village", "desert", "island",
    "volcano", "canyon", "harbor",
]  # fmt: skip
PLACES = [
    "on a hill", "by the sea", "in the mountains", "under the stars", "in a snowy valley", "at the edge of a cliff",
    "in a dense jungle", "on a distant planet", "in the clouds", "beside a lake", "in a busy street", "in the desert",
]  # fmt: skip
LIGHT = [
    "at sunset", "at sunrise", "at night", "golden hour", "volumetric light", "moonlight", "overcast",
    "dramatic lighting", "soft light", "neon lights", "fog", "rain",
]  # fmt: skip
STYLES = [
    "oil painting", "watercolor", "concept art", "studio ghibli style", "cinematic", "matte painting",
    "digital art", "pixel art", "ink drawing", "35mm photo", "low poly", "art nouveau", "ukiyo-e",
]  # fmt: skip
NEGATIVES = ["blurry", "lowres", "bad anatomy", "watermark", "text", "jpeg artifacts", "deformed", "extra fingers"]
TASKS = [("txt2img", 60), ("img2img", 20), ("inpaint", 12), ("controlnet", 8)]
STATUSES = [("succeeded", 94), ("failed", 4), ("cancelled", 2)]
REVIEWS = [("none", 92), ("approved", 6), ("rejected", 2)]
MODELS = ["embedded", "sd15", "sdxl", "dreamshaper", "realistic-vision"]
USERS = [f"user{n}" for n in range(12)]
TAGS = ["keeper", "print", "client", "wip", "reference", "portfolio", "fix", "nsfw-check", "hero", "draft"]
BOARDS = ["Poster", "Album cover", "Moodboard", "Book", "Website", "Game assets", "Client A", "Client B"]
SAMPLERS = ["Euler a", "DPM++ 2M", "DDIM", "UniPC"]


def weighted(rng: random.Random, choices: list[tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def synthetic(seed: int = 0) -> Iterator[dict[str, Any]]:
    """Generation rows, oldest first, the same sequence every run."""
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        prompt = ", ".join(
            [
                *rng.sample(QUALITY, 2),
                f"a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(PLACES)}",
                rng.choice(LIGHT),
                rng.choice(STYLES),
            ]
        )
        negative = ", ".join(rng.sample(NEGATIVES, rng.randint(0, 4)))
        task = weighted(rng, TASKS)
        created = T0 + timedelta(seconds=30 * n)
        params = {
            "task": task, "model": rng.choice(MODELS), "prompt": prompt, "negative_prompt": negative,
            "num_inference_steps": rng.choice([20, 25, 30]), "sampler": rng.choice(SAMPLERS),
            "guidance_scale": rng.choice([5.0, 7.0, 7.5]), "seed": rng.randrange(2**32), "width": 512, "height": 512,
            "batch_size": 1,
        }  # fmt: skip
        review = weighted(rng, REVIEWS)
        yield {
            "id": n, "created_at": created, "finished_at": created + timedelta(seconds=4), "user": rng.choice(USERS),
            "task": task, "model": params["model"], "model_revision": "main", "params": params, "prompt": prompt,
            "negative_prompt": negative, "seed": params["seed"], "sampler": params["sampler"],
            "num_inference_steps": params["num_inference_steps"], "guidance_scale": params["guidance_scale"],
            "width": 512, "height": 512, "batch_size": 1, "status": weighted(rng, STATUSES), "error": None,
            "duration_ms": rng.randint(1500, 9000), "timings": {"run_s": 3.2}, "environment": {"device": "cuda"},
            "parent_id": rng.randint(1, n - 1) if n > 1 and rng.random() < 0.1 else None,
            "starred": rng.random() < 0.1, "review": review, "review_note": "hands" if review == "rejected" else None,
            "reviewed_by": None if review == "none" else rng.choice(USERS),
            "reviewed_at": None if review == "none" else created + timedelta(hours=1),
        }  # fmt: skip


def fill(data_dir: Path, size: int) -> str:
    """A migrated gallery with `size` generations, written with Core executemany in one transaction."""
    url = f"sqlite:///{data_dir}/gallery.db"
    Gallery(url=url, data_dir=data_dir).close()  # creates the schema through the migrations
    files = FileStore(data_dir)
    shared = []
    for n in range(32):  # real files; every row shares one of them, as identical outputs would
        staged = files.stage(PILImage.new("RGB", (64, 64), (n * 8, 255 - n * 8, 128)))
        files.land(staged)
        shared.append(staged)
    rng = random.Random(1)
    engine = make_engine(url)
    with engine.begin() as connection:
        boards = [{"id": n, "name": name, "created_by": "user0", "created_at": T0} for n, name in enumerate(BOARDS, 1)]
        connection.execute(insert(Board), boards)
        rows = synthetic()
        for start in range(0, size, 10_000):
            chunk = [next(rows) for _ in range(min(10_000, size - start))]
            connection.execute(insert(Generation), chunk)
            images, tags, items = [], [], []
            for row in chunk:
                stored = shared[row["id"] % len(shared)]
                images.append({
                    "generation_id": row["id"], "role": "output", "position": 0, "seed": row["seed"],
                    "sha256": stored.sha256, "path": stored.path, "width": 512, "height": 512,
                    "thumb_path": stored.thumb_path, "created_at": row["finished_at"],
                })  # fmt: skip
                if rng.random() < 0.2:
                    tags += [{"generation_id": row["id"], "tag": t} for t in rng.sample(TAGS, rng.randint(1, 2))]
                if rng.random() < 0.03:
                    items.append({"board_id": rng.randint(1, len(BOARDS)), "generation_id": row["id"], "added_at": T0})
            connection.execute(insert(Image), images)
            if tags:
                connection.execute(insert(Tag), tags)
            if items:
                connection.execute(insert(BoardItem), items)
    engine.dispose()
    return url


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs=2, default=[1_000, 100_000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        galleries: dict[int, Gallery] = {}
        checks: dict[int, dict[str, Callable[[], Any]]] = {}
        for size in args.sizes:
            data_dir = Path(folder) / str(size)
            started = time.perf_counter()
            url = fill(data_dir, size)
            print(f"filled {size:,} generations in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            g = galleries[size] = Gallery(url=url, data_dir=data_dir)
            middle = size // 2
            # A real cursor for the middle of the gallery (page 1,000 of 50 at
            # 100k): the next_cursor of a one-row page that ends there; a
            # newest-first cursor is a position, whatever the filters.
            deep = g.search(limit=1, created_to=g.get(middle + 1).created_at).next_cursor
            assert len(g.search(limit=PAGE, cursor=deep).records) == PAGE
            checks[size] = {
                "first page of 50": lambda g=g: g.search(limit=PAGE),
                "filtered page (task=txt2img, starred)": lambda g=g: g.search(task="txt2img", starred=True, limit=PAGE),
                f"text search '{TEXT}', ranked": lambda g=g: g.search(text=TEXT, limit=PAGE),
                "deep page (middle of the gallery, keyset)": lambda g=g, c=deep: g.search(limit=PAGE, cursor=c),
                "open one record (get)": lambda g=g, m=middle: g.get(m),
                f"info: text search '{NARROW}', ranked": lambda g=g: g.search(text=NARROW, limit=PAGE),
                "info: count(status=succeeded)": lambda g=g: g.count(status="succeeded"),
            }

        small, large = args.sizes
        for text in (TEXT, NARROW):
            matches = [galleries[size].count(text=text) for size in args.sizes]
            print(f"'{text}' matches {matches[0]:,} and {matches[1]:,} generations", file=sys.stderr)

        names = list(checks[small])
        samples: dict[str, dict[int, list[float]]] = {name: {small: [], large: []} for name in names}
        for name in names:  # warm up every query once
            for size in args.sizes:
                checks[size][name]()
        for _ in range(args.repeats):
            for name in names:
                for size in args.sizes:
                    samples[name][size].append(timed(checks[size][name]))

        print(f"| operation | {small:,} rows (ms) | {large:,} rows (ms) | ratio |")
        print("|---|---:|---:|---:|")
        for name in names:
            a, b = (statistics.median(samples[name][size]) for size in args.sizes)
            print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
        for gallery in galleries.values():
            gallery.close()


if __name__ == "__main__":
    main()
