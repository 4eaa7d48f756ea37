"""What the gallery takes in and hands out: plain frozen values, never ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from PIL import Image

from storage.errors import StorageError


@dataclass(frozen=True, kw_only=True)
class GenerationFields:
    """A generation's request as the gallery keeps it, under the names of the `generations` columns.

    `params` is the full request. The fields people filter on (task to
    batch_size) are copies of fields in it with the same names.
    """

    user: str
    task: str
    model: str
    model_revision: str | None
    params: dict[str, Any]
    prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    batch_size: int
    parent_id: int | None


# What is not a copy of a request field: who asked, what the model's weights were, the request, its origin.
_NOT_COPIED = ("user", "model_revision", "params", "parent_id")
COPIED_FROM_PARAMS = tuple(f.name for f in fields(GenerationFields) if f.name not in _NOT_COPIED)


@dataclass(frozen=True, kw_only=True)
class NewGeneration(GenerationFields):
    """A generation to record; its model's revision and its parent may be unknown."""

    model_revision: str | None = None
    parent_id: int | None = None

    @classmethod
    def from_params(
        cls, params: dict[str, Any], *, user: str, model_revision: str | None = None, parent_id: int | None = None
    ) -> NewGeneration:
        """A new generation whose indexed fields are copied from the request's params (`to_dict()`), by name."""
        missing = [name for name in COPIED_FROM_PARAMS if name not in params]
        if missing:
            raise StorageError(f"params must hold every indexed field of a generation; missing {', '.join(missing)}.")
        copied = {name: params[name] for name in COPIED_FROM_PARAMS}
        return cls(user=user, params=params, model_revision=model_revision, parent_id=parent_id, **copied)


@dataclass(frozen=True)
class ImageInput:
    role: str  # output | input | mask | control | control_source | reference
    image: Image.Image
    seed: int | None = None  # outputs: the seed that made this image


@dataclass(frozen=True)
class ImageRecord:
    id: int
    generation_id: int
    role: str
    position: int
    seed: int | None
    sha256: str
    path: str  # relative to the data folder, '/'-separated
    width: int
    height: int
    thumb_path: str  # relative to the data folder, '/'-separated


@dataclass(frozen=True, kw_only=True)
class GenerationRecord(GenerationFields):
    """A stored generation: its request, how its run went, its images and its review state."""

    id: int
    created_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None
    duration_ms: int | None
    timings: dict[str, Any]
    environment: dict[str, Any]
    images: tuple[ImageRecord, ...]
    starred: bool
    review: str  # none | approved | rejected
    review_note: str | None
    reviewed_by: str | None  # who last set `review`
    reviewed_at: datetime | None
    tags: tuple[str, ...]  # sorted
    boards: tuple[str, ...]  # names of the boards it is on, sorted
    started_at: datetime | None  # when a worker took it; None while queued, or if never started
    lease_owner: str | None  # the worker that ran it, or runs it: "host:pid:token"
    lease_expires_at: datetime | None  # while running: when it counts as interrupted unless renewed
    # Prompt adherence in [0, 1] (pipelines/adherence.py); None when not scored: an older
    # record, one still running or failed, or a model nothing can score (`adherence_detail` says why).
    adherence: float | None = None
    adherence_detail: dict[str, Any] | None = None

    @property
    def outputs(self) -> tuple[ImageRecord, ...]:
        return tuple(sorted((i for i in self.images if i.role == "output"), key=lambda i: i.position))


@dataclass(frozen=True, kw_only=True)
class SearchFilter:
    """Which generations `Gallery.search`, `count` and `list` consider; a field left None matches everything.

    `text` as `Gallery.search` describes; `created_from` is inclusive,
    `created_to` exclusive; `board` is a board's name; `min_adherence` a
    score from 0 to 1.
    """

    text: str | None = None
    task: str | None = None
    model: str | None = None
    user: str | None = None
    status: str | None = None
    starred: bool | None = None
    review: str | None = None
    tag: str | None = None
    board: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    min_adherence: float | None = None  # inclusive; unscored generations never match it


@dataclass(frozen=True)
class BoardRecord:
    id: int
    name: str
    created_by: str
    created_at: datetime
    size: int  # generations on it


@dataclass(frozen=True)
class Page:
    """One page of `Gallery.search`; pass `next_cursor` back as `cursor` for the next, until it is None."""

    records: tuple[GenerationRecord, ...]
    next_cursor: str | None
