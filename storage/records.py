"""What the gallery takes in and hands out: plain frozen values, never ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PIL import Image


@dataclass(frozen=True, kw_only=True)
class NewGeneration:
    """The indexed columns are copies of fields in `params`, kept so people can filter on them."""

    user: str
    task: str
    model: str
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
    model_revision: str | None = None
    parent_id: int | None = None


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


@dataclass(frozen=True)
class GenerationRecord:
    id: int
    created_at: datetime
    finished_at: datetime | None
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
    status: str
    error: str | None
    duration_ms: int | None
    timings: dict[str, Any]
    environment: dict[str, Any]
    parent_id: int | None
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

    @property
    def outputs(self) -> tuple[ImageRecord, ...]:
        return tuple(sorted((i for i in self.images if i.role == "output"), key=lambda i: i.position))


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
