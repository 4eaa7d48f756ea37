"""The sha256 of every output of a fixed set of requests, one per task and control, on the embedded model.

A refactor that must not change behaviour runs this before and after and
compares the two listings (issue 12). It goes through the `atelier generate`
command in this process, so the hashes are of the gallery's own PNG files
(pixels and metadata), the way a rerun compares them.

    python scripts/image_hashes.py > before.json
    ... change the code ...
    python scripts/image_hashes.py | diff before.json -
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
    os.environ.setdefault(name, value)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.embedded.world import Scene, render  # noqa: E402
from webui import cli  # noqa: E402

COMMON = ["--steps", "8", "--seed", "11"]


def requests(folder: Path) -> dict[str, list[str]]:
    photo = folder / "photo.png"
    Image.fromarray(render(Scene("circle", "yellow", "blue", 0.25, 0.4, 0.45))).save(photo)
    product = folder / "product.png"
    rgba = np.dstack([render(Scene("square", "red", "white", 0.22, 0.5, 0.5)), np.full((64, 64), 255, np.uint8)])
    rgba[:, :, 3][np.all(rgba[:, :, :3] == 255, axis=2)] = 0  # a cut-out product: the background is transparent
    Image.fromarray(rgba, "RGBA").save(product)
    return {
        "txt2img": ["--prompt", "a red circle on a blue background", *COMMON],
        "txt2img batch 2, Euler a": [
            "--prompt",
            "a green square on a white background",
            "--batch-size",
            "2",
            "--sampler",
            "Euler a",
            *COMMON,
        ],
        "txt2img weighted prompt, negative": [
            "--prompt",
            "a (purple:1.3) triangle on a [yellow] background",
            "--negative-prompt",
            "red",
            *COMMON,
        ],
        "txt2img variation seed": [
            "--prompt",
            "a blue circle on a red background",
            "--variation-seed",
            "5",
            "--variation-strength",
            "0.4",
            "--batch-size",
            "2",
            *COMMON,
        ],
        "img2img": [
            "--task",
            "img2img",
            "--prompt",
            "a yellow circle on a red background",
            "--image",
            str(photo),
            "--strength",
            "0.7",
            *COMMON,
        ],
        "inpaint": [
            "--task",
            "inpaint",
            "--prompt",
            "a red square on a green background",
            "--image",
            str(product),
            *COMMON,
        ],
        "controlnet canny": [
            "--task",
            "controlnet",
            "--prompt",
            "a white circle on a purple background",
            "--control-image",
            str(photo),
            "--preprocessor",
            "canny",
            *COMMON,
        ],
        "controlnet over an init image": [
            "--task",
            "controlnet",
            "--prompt",
            "a white circle on a red background",
            "--control-image",
            str(photo),
            "--image",
            str(photo),
            "--strength",
            "0.8",
            *COMMON,
        ],
    }


def main() -> int:
    torch.set_num_threads(1)
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, arguments in requests(folder).items():
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = cli.main(["generate", "--data", str(folder / "data"), "--json", *arguments])
            if code != 0:
                print(f"{name}: atelier generate exited {code}", file=sys.stderr)
                return code
            record = json.loads(out.getvalue())
            hashes[name] = [image["sha256"] for image in record["images"]]
    print(json.dumps(hashes, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
