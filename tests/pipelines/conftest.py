"""Synthetic product photos for the compositing tests and benchmarks/bench_matting.py.

A studio shot is a backdrop (a colour with a gentle gradient and sensor
noise) and a product drawn at 4x and box-filtered, so its edge pixels are
part product, part backdrop, as a camera's are. The true coverage comes
back with the photo, which is what the edge metric needs.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

STUDIO_BACKDROPS = {"white": (246, 246, 244), "grey": (150, 152, 155), "teal": (40, 150, 160)}
SUPERSAMPLE = 4


def product_photo(
    size: int = 256, backdrop=(246, 246, 244), *, seed: int = 0, soft_alpha: bool = False, blur: float = 0.0
) -> tuple[Image.Image, np.ndarray]:
    """(photo, coverage): a bottle-and-box product on a studio backdrop.

    ``coverage`` (H x W, 0..1) is how much of each pixel the product covers.
    With ``soft_alpha`` the photo is an RGBA cut-out whose alpha is that
    coverage (its RGB the product's own colour everywhere). ``blur`` (pixels)
    softens the edge as a lens does on a large photo.
    """
    big = size * SUPERSAMPLE
    shape = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(shape)
    s = big / 256
    draw.rounded_rectangle((70 * s, 96 * s, 170 * s, 226 * s), radius=22 * s, fill=255)  # body
    draw.rounded_rectangle((104 * s, 40 * s, 136 * s, 110 * s), radius=7 * s, fill=255)  # neck
    draw.ellipse((150 * s, 150 * s, 214 * s, 214 * s), fill=255)  # a round tin beside it
    coverage = np.asarray(shape.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
    if blur:
        coverage = cv2.GaussianBlur(coverage, (0, 0), blur)
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, size)[:, None, None]
    xs = np.linspace(0, 1, size)[None, :, None]
    back = np.array(backdrop, np.float32) - 12 * ys + rng.normal(0, 2.5, (size, size, 3))
    product = np.array([30, 70, 120], np.float32) + 60 * np.sin(np.pi * xs) + 30 * ys
    product = product + rng.normal(0, 2.0, (size, size, 3))
    product[int(0.62 * size) : int(0.72 * size), int(0.3 * size) : int(0.6 * size)] = [210, 90, 40]  # a label
    cover = coverage[..., None]
    if soft_alpha:
        rgba = np.dstack([np.clip(product, 0, 255), np.rint(coverage * 255)]).astype(np.uint8)
        return Image.fromarray(rgba, mode="RGBA"), coverage
    photo = back * (1 - cover) + product * cover
    return Image.fromarray(np.clip(np.rint(photo), 0, 255).astype(np.uint8)), coverage


def new_background(size: int, colour, *, seed: int = 1) -> np.ndarray:
    """A generated-looking background: a colour with a little texture (0..255 float)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.array(colour, np.float32) + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)


def ring(coverage: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels within ``width`` pixels outside the true product (coverage over one half)."""
    product = coverage > 0.5
    distance = cv2.distanceTransform((~product).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (distance > 0) & (distance <= width)


def ring_distance(result: Image.Image, background: np.ndarray, coverage: np.ndarray) -> float:
    """Median RGB distance between the result and the new background on the 2 px ring outside the product."""
    where = ring(coverage)
    out = np.asarray(result.convert("RGB"), np.float32)[where]
    return float(np.median(np.linalg.norm(out - background.astype(np.float32)[where], axis=1)))


@pytest.fixture
def studio_photo():
    return product_photo
