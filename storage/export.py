"""Export generations as one ZIP: their output PNGs, byte for byte, and a manifest in JSON and CSV.

The PNGs are the gallery's own files (so they keep their metadata and their
sha256), named `<generation id>-<position>-<seed>.png`. `manifest.json` has
one object per image with the record's full params; `manifest.csv` has the
same rows with the params spread over columns, for a spreadsheet. CSV cells
hold the text as it is: a prompt that starts with "=" is not escaped, so open
the file as data, not as a formula sheet.

With `image_format` "jpeg" or "webp" each PNG goes in as a JPEG or WebP that
carries the same `parameters` text in its EXIF (storage/pngmeta.exif_copy),
for tools and sites that take no PNG; the manifest's sha256 is still the
gallery's PNG's, the image's identity there.

The ZIP is written under a temporary name in the target folder and renamed
into place only when complete (STYLE.md rule 5), so a crash or a refused
export leaves no half ZIP, and an existing file of that name is replaced only
by a complete one. Every file's sha256 is checked while it is copied; a file
that no longer matches its record stops the export.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from storage.errors import RecordNotFound, StorageError
from storage.gallery import Gallery
from storage.pngmeta import EXIF_FORMATS, exif_copy
from storage.records import GenerationRecord

# The params a spreadsheet reader expects first; any others follow, sorted.
PARAM_COLUMNS = (
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "sampler",
    "model",
    "task",
)
IMAGE_COLUMNS = (
    "generation_id",
    "file",
    "sha256",
    "seed",
    "user",
    "created_at",
    "model",
    "adherence",  # this image's prompt-adherence score, else its generation's; empty when not scored
    "adherence_method",
)
_PAGE = 200  # board members fetched per search page
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Exported:
    path: Path
    generations: int  # generations with images in the ZIP
    images: int
    skipped: tuple[int, ...]  # generations with no output image (failed, cancelled or running)


IMAGE_FORMATS = ("png", *EXIF_FORMATS)


def export_zip(
    gallery: Gallery, generation_ids: Iterable[int], out_path: Path, *, image_format: str = "png"
) -> Exported:
    """Write the output images of these generations, in this order, and their manifests to `out_path`."""
    ids = list(generation_ids)
    for generation_id in ids:
        if isinstance(generation_id, bool) or not isinstance(generation_id, int):
            raise StorageError(f"generation_ids must hold whole numbers, not {generation_id!r}.")
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise StorageError("generation_ids must name at least one generation; nothing was exported.")
    _check_format(image_format)
    return _write(gallery, [gallery.get(generation_id) for generation_id in ids], Path(out_path), image_format)


def export_board(gallery: Gallery, board_name: str, out_path: Path, *, image_format: str = "png") -> Exported:
    """Write the output images of every generation on a board, oldest first, and their manifests to `out_path`."""
    _check_format(image_format)
    if board_name not in {board.name for board in gallery.boards()}:
        raise RecordNotFound(f"Board {board_name!r} does not exist.")
    records: list[GenerationRecord] = []
    cursor = None
    while True:
        page = gallery.search(board=board_name, limit=_PAGE, cursor=cursor)
        records += page.records
        cursor = page.next_cursor
        if cursor is None:
            break
    if not records:
        raise StorageError(f"Board {board_name!r} is empty; nothing was exported.")
    return _write(gallery, sorted(records, key=lambda record: record.id), Path(out_path), image_format)


def image_name(record: GenerationRecord, position: int, seed: int | None, image_format: str = "png") -> str:
    suffix = EXIF_FORMATS[image_format][1] if image_format in EXIF_FORMATS else ".png"
    return f"{record.id}-{position}-{seed}{suffix}"


def _check_format(image_format: str) -> None:
    if image_format not in IMAGE_FORMATS:
        raise StorageError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {image_format!r}.")


def _write(gallery: Gallery, records: Sequence[GenerationRecord], out_path: Path, image_format: str) -> Exported:
    # 1. Check the target before writing anything.
    folder = out_path.parent
    if not folder.is_dir():
        raise StorageError(f"The folder for {out_path} does not exist; create it first.")
    if out_path.is_dir():
        raise StorageError(f"{out_path} is a folder; give a file name such as export.zip.")
    partial = folder / f".{out_path.name}.{uuid.uuid4().hex}.partial"
    rows: list[dict[str, Any]] = []
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            # 2. The images, byte for byte (PNG is compressed already, so stored as is), or their EXIF copies.
            for record in records:
                for image in record.outputs:
                    name = image_name(record, image.position, image.seed, image_format)
                    entry = _entry(name, record.created_at, zipfile.ZIP_STORED)
                    with gallery.path(image.path).open("rb") as source, archive.open(entry, "w") as target:
                        if image_format == "png":
                            _copy_checked(source, target, expected=image.sha256, record=record)
                        else:
                            png = io.BytesIO()
                            _copy_checked(source, png, expected=image.sha256, record=record)
                            target.write(exif_copy(png.getvalue(), image_format))
                    rows.append(_row(record, name, image.sha256, image.seed, image.position))
            # 3. The manifests, stamped with the newest record's time so that the same export gives the same bytes.
            newest = max(record.created_at for record in records)
            for name, data in (("manifest.json", _manifest_json(rows)), ("manifest.csv", _manifest_csv(rows))):
                archive.writestr(_entry(name, newest, zipfile.ZIP_DEFLATED), data)
        # 4. Durable, then in place.
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    skipped = tuple(record.id for record in records if not record.outputs)
    return Exported(path=out_path, generations=len(records) - len(skipped), images=len(rows), skipped=skipped)


def _copy_checked(source: Any, target: Any, *, expected: str, record: GenerationRecord) -> None:
    digest = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        target.write(chunk)
    if digest.hexdigest() != expected:
        raise StorageError(
            f"An image file of generation {record.id} no longer matches its sha256 {expected}; nothing was exported."
        )


def _row(record: GenerationRecord, name: str, sha256: str, seed: int | None, position: int) -> dict[str, Any]:
    detail = record.adherence_detail or {}
    scored = detail.get("images") or []
    own = scored[position].get("score") if position < len(scored) else None
    return {
        "generation_id": record.id,
        "file": name,
        "sha256": sha256,
        "seed": seed,  # this image's own: the record's seed + its position in the batch
        "user": record.user,
        "created_at": record.created_at.isoformat(),
        "model": record.model,
        "adherence": record.adherence if own is None else own,
        "adherence_method": detail.get("method"),
        "params": record.params,
    }


def _manifest_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


def _manifest_csv(rows: list[dict[str, Any]]) -> str:
    # Params become `params.<name>` columns, so the request's seed and model
    # never collide with the image's own seed and the record's model.
    extra = sorted({key for row in rows for key in row["params"]} - set(PARAM_COLUMNS))
    params = [*PARAM_COLUMNS, *extra]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*IMAGE_COLUMNS, *(f"params.{key}" for key in params)])
    for row in rows:
        values = [row["params"].get(key) for key in params]
        writer.writerow([*(row[key] for key in IMAGE_COLUMNS), *(_cell(value) for value in values)])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


def _entry(name: str, moment: datetime, compression: int) -> zipfile.ZipInfo:
    """A ZIP entry dated `moment` (UTC; ZIP has no zone, and no date before 1980), readable by everyone."""
    utc = moment.astimezone(timezone.utc) if moment.tzinfo else moment
    when = max((utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second), (1980, 1, 1, 0, 0, 0))
    entry = zipfile.ZipInfo(name, date_time=when)
    entry.compress_type = compression
    entry.external_attr = 0o644 << 16  # without it, unzip makes files no one may read
    return entry
