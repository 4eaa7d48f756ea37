"""A grounded shadow from the product's silhouette, drawn on the background before the product goes on top.

A product cut out and set on a new background floats; a retoucher grounds it
with a shadow made from its own shape. Two kinds:

- *drop*: the silhouette moved ``distance`` pixels towards ``angle`` and
  blurred by ``softness``, as a light from the opposite side would cast it;
- *contact*: the silhouette squashed flat against the product's base, the
  dark line where it touches the table, moved and blurred the same way.

Both darken the background multiplicatively by up to ``opacity``, so the
generated texture shows through. The product is composited afterwards, so
the shadow never touches a product pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# A contact shadow is this share of the product's height, at least two pixels.
CONTACT_HEIGHT = 0.06


@dataclass(frozen=True)
class Shadow:
    kind: str  # "drop" or "contact"
    angle: float  # degrees the shadow falls towards, clockwise from the right: 90 = straight down
    distance: int  # pixels
    softness: int  # pixels of blur
    opacity: float  # 0..1: how dark the shadow's core is

    @property
    def offset(self) -> tuple[float, float]:
        radians = math.radians(self.angle)
        return self.distance * math.cos(radians), self.distance * math.sin(radians)


def _contact(alpha: np.ndarray) -> np.ndarray:
    """The silhouette squashed to a thin strip whose middle lies on the product's lowest row."""
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha > 0.5).any(axis=0))
    flat = np.zeros_like(alpha)
    if rows.size == 0:
        return flat
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    thickness = max(2, round(CONTACT_HEIGHT * (bottom - top)))
    squashed = cv2.resize(alpha[top:bottom, left:right], (right - left, thickness), interpolation=cv2.INTER_AREA)
    start = bottom - thickness // 2
    end = min(alpha.shape[0], start + thickness)
    flat[start:end, left:right] = squashed[: end - start]
    return flat


def darkness(alpha: np.ndarray, shadow: Shadow) -> np.ndarray:
    """How much each background pixel is darkened, 0..opacity."""
    shape = _contact(alpha) if shadow.kind == "contact" else alpha.astype(np.float32)
    dx, dy = shadow.offset
    height, width = alpha.shape
    moved = cv2.warpAffine(
        shape, np.float32([[1, 0, dx], [0, 1, dy]]), (width, height), flags=cv2.INTER_LINEAR, borderValue=0
    )
    if shadow.softness > 0:
        # A Gaussian whose visible reach (about 2 sigma) is the softness in pixels.
        moved = cv2.GaussianBlur(moved, (0, 0), shadow.softness / 2)
    return np.clip(moved, 0.0, 1.0) * shadow.opacity


def cast(background: np.ndarray, alpha: np.ndarray, shadow: Shadow) -> np.ndarray:
    """The background (H x W x 3, 0..255) with the shadow of ``alpha`` on it, as float32."""
    shade = 1.0 - darkness(alpha, shadow)[..., None]
    return background.astype(np.float32) * shade
