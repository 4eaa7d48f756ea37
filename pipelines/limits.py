"""What a request may ask, and the error for input outside it.

The request types, the upload checks, the LoRA folder and the preprocessors
all refuse input with ``RequestError`` and share these ranges. They live here,
apart from ``pipelines.requests``, because the request module itself checks
its fields with those modules: with the shared names in one module that
imports nothing of the project, every one of them can import it at the top
and no two import each other.
"""

from __future__ import annotations

from typing import Any

# Seeds are 64-bit, as ComfyUI's and Fooocus's are, and torch.Generator.manual_seed takes all of them.
MAX_SEED = 2**64 - 1
# Atelier's seeds stopped at 2**32 - 1 before issue 19; a batch from a seed below it still counts on
# within 32 bits (seed + i wraps at 2**32), so those records rerun to their own images.
SEED_RANGE_32 = 2**32
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_BATCH = 16
MAX_PROMPT_CHARS = 10_000

# Product shots (issue 20): the matte's unknown band, on each side of the mask's edge, in pixels;
# the default is wide enough for a 2048 px photo's lens-soft edge and narrow enough for a 512 px one's detail.
DEFAULT_MATTE_BAND, MAX_MATTE_BAND = 4, 64
SHADOW_KINDS = ("none", "drop", "contact")
MAX_SHADOW_PIXELS = 512  # a shadow's distance and softness


def seed_plus(seed: int, offset: int) -> int:
    """The seed ``offset`` images after ``seed`` in a batch: within 32 bits for a 32-bit seed, else 64."""
    return (seed + offset) % (SEED_RANGE_32 if seed < SEED_RANGE_32 else MAX_SEED + 1)


class RequestError(ValueError):
    """Input a user can fix; the message is one sentence naming the field."""


def names_of(keys: Any) -> str:
    """Keys a user sent, for a message: as typed, or quoted where they hold line breaks or control characters."""
    return ", ".join(key if isinstance(key, str) and key.isprintable() else repr(key) for key in keys)
