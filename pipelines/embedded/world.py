"""The embedded model's world: one flat shape on a flat background.

Everything the training script, the evaluation and the picture-checking tests
share: the palette, drawing a scene, captioning it, reading a prompt back into
the scene it asks for, and classifying a picture by its pixels alone.
No torch here: numpy and Pillow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# The palette (issue 3), exactly.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
PLACES = {  # name -> centre as a fraction of the side
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
SIZES = {"small": (0.16, 0.24), "large": (0.34, 0.42)}  # half-side as a fraction of the side
_ANY_SIZE = (0.16, 0.42)
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    half: float  # half the shape's side (or its radius), as a fraction of the image side
    cx: float  # centre, as fractions of the image side
    cy: float

    @property
    def size_word(self) -> str | None:
        for word, (low, high) in SIZES.items():
            if low <= self.half <= high:
                return word
        return None

    @property
    def place_word(self) -> str | None:
        for word, (x, y) in PLACES.items():
            if abs(self.cx - x) <= 0.06 and abs(self.cy - y) <= 0.06:
                return word
        return None


def sample_scene(rng: np.random.Generator) -> Scene:
    colour, background = rng.choice(list(COLOURS), size=2, replace=False)
    half = float(rng.uniform(*_ANY_SIZE))
    # Keep the whole shape inside the frame, with a margin.
    low, high = half + 0.04, 1 - half - 0.04
    if rng.random() < 0.4:  # a named place, so "in the top left" has examples
        x, y = PLACES[rng.choice(list(PLACES))]
        cx = float(np.clip(x + rng.uniform(-0.05, 0.05), low, high))
        cy = float(np.clip(y + rng.uniform(-0.05, 0.05), low, high))
    else:
        cx, cy = float(rng.uniform(low, high)), float(rng.uniform(low, high))
    return Scene(str(rng.choice(SHAPES)), str(colour), str(background), half, cx, cy)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as an RGB uint8 array, edges anti-aliased by supersampling."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy, half = scene.cx * big, scene.cy * big, scene.half * big
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # upright: apex on top, base at the bottom
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of a few phrasings, so the text encoder has to read the words."""
    thing = f"{scene.colour} {scene.shape}"
    size, place = scene.size_word, scene.place_word
    if size and rng.random() < 0.5:
        thing = f"{size} {thing}"
    where = f" in the {place}" if place and rng.random() < 0.6 else ""
    style = rng.integers(4)
    if style == 0:
        return f"{_a(thing)} {thing}{where} on {_a(scene.background)} {scene.background} background"
    if style == 1:
        return f"{thing}{where}, {scene.background} background"
    if style == 2:
        return f"{_a(scene.background)} {scene.background} background with {_a(thing)} {thing}{where}"
    return f"{_a(thing)} {thing} on {scene.background}{where}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_COLOUR_WORDS = "|".join(COLOURS)
_SHAPE_WORDS = "|".join(SHAPES)


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(shape, shape colour, background colour) a prompt asks for, as far as it says."""
    text = prompt.lower()
    shape = re.search(rf"\b({_SHAPE_WORDS})\b", text)
    colour = re.search(rf"\b({_COLOUR_WORDS})\s+(?:(?:small|large)\s+)?({_SHAPE_WORDS})\b", text)
    background = re.search(rf"\b({_COLOUR_WORDS})\s+background\b", text) or re.search(
        rf"\bon\s+(?:an?\s+)?({_COLOUR_WORDS})\b", text
    )
    return (
        shape.group(1) if shape else None,
        colour.group(1) if colour else None,
        background.group(1) if background else None,
    )


@dataclass(frozen=True)
class Reading:
    """What a picture shows, read from its pixels."""

    background: str
    colour: str | None  # None when no shape stands out from the background
    shape: str | None
    centre: tuple[float, float] | None  # fractions of the side
    mask: np.ndarray  # True where the shape is


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)))]


def _open(mask: np.ndarray) -> np.ndarray:
    """Morphological opening with a 3x3 square: erode, then dilate."""

    def shifted(m: np.ndarray, combine) -> np.ndarray:
        padded = np.pad(m, 1, constant_values=combine is np.logical_and)
        out = padded[1:-1, 1:-1].copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                out = combine(out, padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx])
        return out

    return shifted(shifted(mask, np.logical_and), np.logical_or)


def classify(image: np.ndarray | Image.Image) -> Reading:
    """Background from the border, shape colour from pixels far from it, shape from its fill ratio.

    The fill ratio of the shape's bounding box is about 1 for a square, pi/4
    (0.785) for a circle and 1/2 for an upright triangle.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    distance = np.sqrt(((pixels - np.array(COLOURS[background], dtype=np.float32)) ** 2).sum(axis=2))
    # An opening drops stray specks (a decoder's ringing) that would stretch the bounding box.
    mask = _open(distance > 60)
    if mask.sum() < 12:
        return Reading(background, None, None, None, mask)
    # Shape colour: the pixels most unlike the background (anti-aliased edges are not).
    far = distance >= np.quantile(distance[mask], 0.5)
    colour = nearest_colour(np.median(pixels[far & mask], axis=0))
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.87 else "circle" if fill > 0.64 else "triangle"
    side = pixels.shape[0]
    centre = ((xs.min() + xs.max() + 1) / 2 / side, (ys.min() + ys.max() + 1) / 2 / side)
    return Reading(background, colour, shape, centre, mask)
