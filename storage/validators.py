"""The checks every storage service runs on what it is given, and the limits they enforce.

Each check raises StorageError with one sentence naming the field and what is
allowed, and returns the value as it will be stored. Imports nothing of the
project but its errors, so any module can use it without a cycle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from storage.errors import StorageError

MAX_SEED = 2**64 - 1  # stored bit for bit in a signed BIGINT (models.Seed)
MAX_LIST = 1000  # records one call hands back
MAX_NAME = 255  # a person, worker, model or task name: the String(255) columns
MAX_BOARD_NAME = 100
MAX_TAG = 64
MAX_NOTE = 10_000


def check_text(value: object, *, field: str, longest: int = MAX_NAME) -> str:
    """A name, tag or person: non-empty text without surrounding spaces or control characters."""
    if not isinstance(value, str):
        raise StorageError(f"{field} must be a string, not {type(value).__name__}.")
    if not value.strip():
        raise StorageError(f"{field} must not be empty.")
    if value != value.strip():
        raise StorageError(f"{field} {value!r} must not begin or end with spaces.")
    if len(value) > longest:
        raise StorageError(f"{field} must be at most {longest} characters, not {len(value)}.")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise StorageError(f"{field} {value!r} must not contain control characters.")
    return value


def check_tag(tag: object) -> str:
    checked = check_text(tag, field="tag", longest=MAX_TAG)
    if "," in checked:
        # Commas separate tags wherever people type several at once.
        raise StorageError(f"tag {checked!r} must not contain a comma; pass each tag on its own.")
    return checked


def check_tags(tags: object) -> list[str]:
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise StorageError(f"tags must be a list of tags, not {type(tags).__name__}.")
    return list(dict.fromkeys(check_tag(tag) for tag in tags))


def check_note(note: object) -> str | None:
    if note is not None and not isinstance(note, str):
        raise StorageError(f"note must be a string or None, not {type(note).__name__}.")
    if note is not None and len(note) > MAX_NOTE:
        raise StorageError(f"note must be at most {MAX_NOTE} characters, not {len(note)}.")
    return note


def check_word(value: object, allowed: tuple[str, ...], *, field: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise StorageError(f"{field} must be one of {', '.join(allowed)}, not {value!r}.")
    return value


def check_flag(value: object, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise StorageError(f"{field} must be True or False, not {value!r}.")
    return value


def check_time(value: object, *, field: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise StorageError(f"{field} must be a timezone-aware datetime, not {value!r}.")
    return value


def check_seed(seed: int, *, field: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise StorageError(f"{field} must be between 0 and {MAX_SEED}, not {seed}.")
    return seed


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise StorageError(f"limit must be between 1 and {MAX_LIST}, not {limit}.")
    return limit


def check_ids(generation_ids: Iterable[int]) -> list[int]:
    """The ids, each once, in the order given."""
    if isinstance(generation_ids, str | bytes) or not isinstance(generation_ids, Iterable):
        raise StorageError(f"generation_ids must be a list of ids, not {type(generation_ids).__name__}.")
    ids = list(generation_ids)
    for generation_id in ids:
        if isinstance(generation_id, bool) or not isinstance(generation_id, int):
            raise StorageError(f"generation_ids must hold whole numbers, not {generation_id!r}.")
    return list(dict.fromkeys(ids))


def check_score(value: object, *, field: str) -> float:
    """An adherence score: a number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StorageError(f"{field} must be a number from 0 to 1, not {value!r}.")
    if not 0 <= value <= 1:
        raise StorageError(f"{field} must be from 0 to 1, not {value}.")
    return float(value)


def check_duration(duration_ms: int | None) -> int | None:
    if duration_ms is not None and duration_ms < 0:
        raise StorageError(f"duration_ms must be zero or more, not {duration_ms}.")
    return duration_ms


def json_object(value: Mapping[str, Any], *, field: str) -> dict[str, Any]:
    """A deep copy as it will read back from the JSON column, so a record written equals one read."""
    if not isinstance(value, Mapping):
        raise StorageError(f"{field} must be a dict, not {type(value).__name__}.")
    try:
        copied: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise StorageError(
            f"{field} must hold only JSON values (text, finite numbers, lists, dicts): {error}."
        ) from None
    return copied
