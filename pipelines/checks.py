"""Field checks shared by the request types: each raises RequestError with one sentence naming the field."""

from __future__ import annotations

import math
from typing import Any

from pipelines import lora
from pipelines.limits import MAX_PROMPT_CHARS, RequestError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int, *, multiple: int = 1) -> None:
    if not is_int(value) or not low <= value <= high or value % multiple:
        rule = f"a multiple of {multiple} " if multiple > 1 else "a whole number "
        raise RequestError(f"{name} must be {rule}from {low} to {high}; got {value!r}.")


def check_text(name: str, value: Any, *, required: bool) -> None:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text; got {type(value).__name__}.")
    if required and not value.strip():
        raise RequestError(f"{name} must not be empty.")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} must be at most {MAX_PROMPT_CHARS:,} characters; got {len(value):,}.")


def check_fraction(name: str, value: Any, low: float = 0.0, high: float = 1.0, *, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    # An int is finite; math.isfinite would overflow on one past float's range (JSON allows it).
    ok = ok and (isinstance(value, int) or math.isfinite(value))
    if not ok or not (low < value if open_low else low <= value) or value > high:
        allowed = f"above {low:g} and at most {high:g}" if open_low else f"from {low:g} to {high:g}"
        raise RequestError(f"{name} must be a number {allowed}; got {value!r}.")
    return float(value)


def check_loras(value: Any) -> tuple[tuple[str, float], ...]:
    """(name, weight) pairs; whether each file exists is the LoRA folder's to say (pipelines.lora)."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(item, (list, tuple)) and len(item) == 2 for item in value
    ):
        raise RequestError(f"loras must be a list of [name, weight] pairs; got {value!r:.80}.")
    if len(value) > lora.MAX_LORAS:
        raise RequestError(f"loras must name at most {lora.MAX_LORAS} LoRAs; got {len(value)}.")
    pairs = []
    for name, weight in value:
        if not isinstance(name, str) or not name.strip():
            raise RequestError(f"loras must name each LoRA by its file name; got {name!r}.")
        pairs.append((name, lora.check_weight(name, weight)))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise RequestError("loras must name each LoRA once; give one weight per LoRA.")
    return tuple(pairs)


def check_word(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
