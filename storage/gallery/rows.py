"""Between ORM rows and the records callers get: each field is named once, in storage/records.py.

The records' fields carry the names of the columns they come from, so the
mappings here go by `dataclasses.fields` instead of retyping each name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from storage.files import StagedImage
from storage.models import ROLES, Board, Generation, Image, utcnow
from storage.records import BoardRecord, GenerationFields, GenerationRecord, ImageInput, ImageRecord, NewGeneration

_REQUEST = tuple(f.name for f in fields(GenerationFields))
# A record's fields that are not columns of its generation's row: gathered from other tables.
_GATHERED = ("images", "tags", "boards")
_RECORD_COLUMNS = tuple(f.name for f in fields(GenerationRecord) if f.name not in _GATHERED)
_IMAGE_COLUMNS = tuple(f.name for f in fields(ImageRecord))
# What a copy of an image row for another generation keeps: the files and where they sit in it.
_IMAGE_FILE_COLUMNS = tuple(name for name in _IMAGE_COLUMNS if name not in ("id", "generation_id"))


def generation_row(
    new: NewGeneration, params: dict[str, Any], *, created_at: datetime, status: str = "running", **values: Any
) -> Generation:
    """A new row for `new`, with `params` as checked (storage/validators.py `json_object`)."""
    request = {name: getattr(new, name) for name in _REQUEST}
    request["params"] = params
    return Generation(created_at=created_at, status=status, timings={}, environment={}, **request, **values)


def new_from(row: Generation, *, parent_id: int) -> NewGeneration:
    """The same request as a stored generation's, as the child of `parent_id`."""
    request = {name: getattr(row, name) for name in _REQUEST}
    request["parent_id"] = parent_id
    return NewGeneration(**request)


def generation_record(
    row: Generation, images: Sequence[Image] = (), tags: Sequence[str] = (), boards: Sequence[str] = ()
) -> GenerationRecord:
    ordered = sorted(images, key=lambda image: (ROLES.index(image.role), image.position))
    return GenerationRecord(
        **{name: getattr(row, name) for name in _RECORD_COLUMNS},
        images=tuple(ImageRecord(**{name: getattr(image, name) for name in _IMAGE_COLUMNS}) for image in ordered),
        tags=tuple(tags),
        boards=tuple(boards),
    )


def image_row(generation_id: int | None, item: ImageInput, stored: StagedImage, *, position: int) -> Image:
    """The row of an image just staged; `generation_id` None when the relationship will set it."""
    return Image(
        generation_id=generation_id,
        role=item.role,
        position=position,
        seed=item.seed,
        sha256=stored.sha256,
        path=stored.path,
        width=stored.width,
        height=stored.height,
        thumb_path=stored.thumb_path,
        created_at=utcnow(),
    )


def copy_image(image: Image, *, generation_id: int, created_at: datetime) -> Image:
    """A row for another generation naming the same files (content addressing shares them)."""
    files = {name: getattr(image, name) for name in _IMAGE_FILE_COLUMNS}
    return Image(generation_id=generation_id, created_at=created_at, **files)


def board_record(row: Board, *, size: int) -> BoardRecord:
    return BoardRecord(id=row.id, name=row.name, created_by=row.created_by, created_at=row.created_at, size=size)
