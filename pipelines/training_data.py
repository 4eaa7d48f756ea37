"""What a LoRA is trained from: a folder of images with captions, and the settings, checked before anything runs.

A dataset is 20 to 100 images in one folder (not searched recursively),
each with an optional ``<stem>.txt`` caption beside it (the convention of
kohya's scripts and A1111's trainers); images without one get the one
caption given for all. A trigger word leads every caption, so the style
comes when the prompt asks for it. Everything a user can get wrong (too few
images, a file that is not an image, two images under one name, the same
picture twice, an image too small for the resolution) is refused here in one
sentence naming the file or field, before a model is loaded or a file is
written.

Images of mixed sizes are kept: each goes to the bucket (a training size of
about the resolution's area) nearest its aspect ratio, is scaled to cover
it and centre-cropped, and a batch draws from one bucket at a time
(NovelAI's aspect-ratio bucketing, as kohya's scripts do it).

No torch here: the CLI and the studio check a dataset before loading a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipelines.limits import MAX_SEED, RequestError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
MIN_IMAGES, MAX_IMAGES = 20, 100  # the 20-50, with room for a bigger brand set
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
LORA_SUFFIX = ".safetensors"

# Settings a family starts from. The embedded model is tiny and its world is
# 64x64, so it learns from a high rate in a few hundred steps; SD 1.x and
# SDXL take kohya's usual AdamW rate at their native sizes.
DEFAULTS: dict[str, dict[str, Any]] = {
    "embedded": {
        "rank": 8,
        "steps": 300,
        "learning_rate": 1e-3,
        "resolution": 64,
        "batch_size": 8,
        "sample_every": 50,
        "checkpoint_every": 50,
    },
    "sd": {
        "rank": 16,
        "steps": 1500,
        "learning_rate": 1e-4,
        "resolution": 512,
        "batch_size": 1,
        "sample_every": 250,
        "checkpoint_every": 250,
    },
    "sdxl": {
        "rank": 16,
        "steps": 1500,
        "learning_rate": 1e-4,
        "resolution": 1024,
        "batch_size": 1,
        "sample_every": 250,
        "checkpoint_every": 250,
    },
}
MAX_RANK, MAX_TRAINING_STEPS, MAX_BATCH = 128, 100_000, 64
MAX_LEARNING_RATE = 0.01


class DatasetError(RequestError):
    """A dataset, name or setting that cannot be trained on; one sentence naming the file or field."""


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """How to train; ``None`` takes the family's default (``DEFAULTS``)."""

    rank: int | None = None
    steps: int | None = None
    learning_rate: float | None = None
    resolution: int | None = None
    batch_size: int | None = None
    seed: int = 0
    trigger: str = ""  # leads every caption
    caption: str = ""  # for images without a .txt beside them
    sample_every: int | None = None  # a sample image every N steps (0: none but the last)
    checkpoint_every: int | None = None  # a checkpoint every N steps (0: none)
    sample_prompt: str = ""  # empty: the trigger and the first caption
    sample_seed: int = 0

    def __post_init__(self) -> None:
        _whole("rank", self.rank, 1, MAX_RANK)
        _whole("steps", self.steps, 1, MAX_TRAINING_STEPS)
        _whole("resolution", self.resolution, 64, 2048)
        if self.resolution is not None and self.resolution % 16:
            raise DatasetError(f"resolution must be a multiple of 16; got {self.resolution}.")
        _whole("batch_size", self.batch_size, 1, MAX_BATCH)
        _whole("seed", self.seed, 0, MAX_SEED)
        _whole("sample_seed", self.sample_seed, 0, MAX_SEED)
        _whole("sample_every", self.sample_every, 0, MAX_TRAINING_STEPS)
        _whole("checkpoint_every", self.checkpoint_every, 0, MAX_TRAINING_STEPS)
        rate = self.learning_rate
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= MAX_LEARNING_RATE
        ):
            raise DatasetError(
                f"learning_rate must be a number above 0 and at most {MAX_LEARNING_RATE:g}; got {rate!r}."
            )
        for name in ("trigger", "caption", "sample_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 1000 or "\n" in value:
                raise DatasetError(f"{name} must be one line of at most 1000 characters; got {value!r:.60}.")

    def resolved(self, kind: str) -> TrainingSettings:
        """These settings with every unset one taken from the defaults of ``kind`` (embedded, sd or sdxl)."""
        defaults = DEFAULTS[kind]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DatasetError(f"training settings have no field {unknown[0]!r}; use {', '.join(sorted(known))}.")
        return cls(**values)


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DatasetError(f"{name} must be a whole number from {low} to {high}; got {value!r}.")


@dataclass(frozen=True)
class Example:
    file: str  # the image's file name in the dataset folder
    sha256: str
    caption: str  # with the trigger word
    width: int
    height: int


@dataclass(frozen=True)
class Dataset:
    folder: Path
    examples: tuple[Example, ...]

    def fingerprint(self) -> str:
        """Changes when an image or a caption does; a checkpoint from another dataset is not resumed."""
        text = json.dumps([(e.file, e.sha256, e.caption) for e in self.examples])
        return hashlib.sha256(text.encode()).hexdigest()


def check_name(name: Any, loras_folder: Path | str) -> str:
    """A LoRA name that is new in ``loras_folder``: 1 to 64 letters, digits, '_' or '-'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DatasetError(
            f"name must be 1 to 64 letters, digits, '_' or '-', starting with a letter or digit; got {name!r}."
        )
    if (Path(loras_folder) / f"{name}{LORA_SUFFIX}").exists():
        raise DatasetError(f"name {name!r} is taken: a LoRA of that name is already in {loras_folder}; pick another.")
    return name


def with_trigger(caption: str, trigger: str) -> str:
    """The caption led by the trigger word, unless it already has it."""
    caption, trigger = caption.strip(), trigger.strip()
    if not trigger or re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def read_dataset(folder: Path | str, settings: TrainingSettings, *, min_side: int = 0) -> Dataset:
    """The folder's images and captions, checked; ``min_side``: the smallest image side that can be trained on."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset {str(folder)!r} is not a folder; give a folder of 20 to 100 images.")
    files = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    images: dict[str, Path] = {}
    captions: dict[str, Path] = {}
    for path in files:
        suffix = path.suffix.lower()
        if path.is_dir():
            raise DatasetError(f"dataset: {path.name} is a folder; put every image directly in {folder.name}.")
        if suffix == CAPTION_SUFFIX:
            captions[path.stem] = path
        elif suffix in IMAGE_SUFFIXES:
            if path.stem in images:
                raise DatasetError(
                    f"dataset: {images[path.stem].name} and {path.name} share a name; "
                    f"a caption {path.stem}.txt could not tell them apart, so rename one."
                )
            images[path.stem] = path
        else:
            raise DatasetError(
                f"dataset: {path.name} is not an image; only {', '.join(IMAGE_SUFFIXES)} "
                f"images and {CAPTION_SUFFIX} captions may be in the folder."
            )
    for stem, path in captions.items():
        if stem not in images:
            raise DatasetError(f"dataset: caption {path.name} has no image named {stem} beside it.")
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        raise DatasetError(f"dataset must hold {MIN_IMAGES} to {MAX_IMAGES} images; {folder.name} has {len(images)}.")
    examples, seen = [], {}
    for stem, path in images.items():
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in seen:
            raise DatasetError(f"dataset: {path.name} is the same image as {seen[sha256]}; keep one of them.")
        seen[sha256] = path.name
        width, height = _size(path)
        if min(width, height) < min_side:
            raise DatasetError(
                f"dataset: {path.name} is {width}x{height}; both sides must be at least {min_side} pixels "
                f"for this resolution."
            )
        text = captions[stem].read_text(encoding="utf-8", errors="replace") if stem in captions else settings.caption
        caption = with_trigger(" ".join(text.split()), settings.trigger)
        examples.append(Example(path.name, sha256, caption, width, height))
    if not any(e.caption for e in examples):
        raise DatasetError("captions are all empty; give a trigger word, a caption for all, or .txt captions.")
    return Dataset(folder, tuple(examples))


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"dataset: {path.name} is not an image that can be read ({error}).") from None


def load_image(dataset: Dataset, example: Example) -> Image.Image:
    with Image.open(dataset.folder / example.file) as image:
        return image.convert("RGB")


# -- buckets ----------------------------------------------------------------------


def buckets(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """Training sizes (width, height) of about ``resolution`` squared pixels, sides a multiple of ``multiple``,
    from 1:2 to 2:1."""
    sizes = set()
    area = resolution * resolution
    width = multiple
    while width <= resolution * 2:
        height = int(area / width) // multiple * multiple
        if height >= multiple and 0.5 <= width / height <= 2:
            sizes.add((width, height))
        width += multiple
    return sorted(sizes)


def bucket_for(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log space, so 1:2 and 2:1 are as far from 1:1)."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def crop_to(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` scaled to cover ``size`` and centre-cropped to it; also the crop's top-left corner (SDXL takes it)."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height)), (top, left)
