from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from storage import Gallery, GenerationRecord, ImageInput, NewGeneration, RecordNotFound, StorageError, export
from storage.export import export_board, export_zip
from storage.pngmeta import read_png_metadata

NewFactory = Callable[..., NewGeneration]


def made(gallery: Gallery, new: NewGeneration, colours: list[str], *, inputs: int = 0) -> GenerationRecord:
    record = gallery.start(new)
    images = [
        ImageInput("output", Image.new("RGB", (32, 32), colour), seed=new.seed + i) for i, colour in enumerate(colours)
    ]
    images += [ImageInput("input", Image.new("RGB", (32, 32), "white")) for _ in range(inputs)]
    return gallery.finish(record.id, images=images, environment={"device": "cpu"}, timings={}, duration_ms=10)


@pytest.fixture
def records(gallery: Gallery, new_generation: NewFactory) -> list[GenerationRecord]:
    return [
        made(gallery, new_generation(prompt="a red circle", seed=42, batch_size=2), ["red", "orange"], inputs=1),
        made(
            gallery, new_generation(user="bob", prompt="a blue square", seed=7, batch_size=1, sampler="DDIM"), ["blue"]
        ),
        made(gallery, new_generation(prompt="a green line", seed=9, batch_size=1), ["green"]),
    ]


def test_zip_holds_the_gallery_files_byte_for_byte_and_a_manifest(
    tmp_path: Path, gallery: Gallery, records: list[GenerationRecord]
) -> None:
    first, second, _ = records
    out = tmp_path / "out.zip"

    exported = export_zip(gallery, [first.id, second.id], out)

    assert (exported.path, exported.generations, exported.images, exported.skipped) == (out, 2, 3, ())
    with zipfile.ZipFile(out) as archive:
        names = [f"{first.id}-0-42.png", f"{first.id}-1-43.png", f"{second.id}-0-7.png"]
        assert archive.namelist() == [*names, "manifest.json", "manifest.csv"]
        outputs = [*first.outputs, *second.outputs]
        for name, image in zip(names, outputs):
            data = archive.read(name)
            assert hashlib.sha256(data).hexdigest() == image.sha256
            assert data == gallery.path(image.path).read_bytes()
        manifest = json.loads(archive.read("manifest.json"))
        table = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
        # The PNG keeps the parameters it carried in the gallery.
        assert json.loads(read_png_metadata(io.BytesIO(archive.read(names[2])))["atelier"])["image_seed"] == 7

    assert [entry["file"] for entry in manifest] == names
    assert manifest[1] == {
        "generation_id": first.id,
        "file": names[1],
        "sha256": first.outputs[1].sha256,
        "seed": 43,
        "user": "ann",
        "created_at": first.created_at.isoformat(),
        "model": "embedded",
        "adherence": None,  # never scored
        "adherence_method": None,
        "params": first.params,
    }
    assert manifest[2]["user"] == "bob" and manifest[2]["params"]["sampler"] == "DDIM"

    assert list(table[0]) == [
        "generation_id", "file", "sha256", "seed", "user", "created_at", "model", "adherence", "adherence_method",
        "params.prompt", "params.negative_prompt", "params.seed", "params.num_inference_steps",
        "params.guidance_scale", "params.width", "params.height", "params.sampler", "params.model", "params.task",
        "params.batch_size",
    ]  # fmt: skip
    assert [row["file"] for row in table] == names
    assert table[1] == {
        "generation_id": str(first.id),
        "file": names[1],
        "sha256": first.outputs[1].sha256,
        "seed": "43",
        "user": "ann",
        "created_at": first.created_at.isoformat(),
        "model": "embedded",
        "adherence": "",
        "adherence_method": "",
        "params.prompt": "a red circle",
        "params.negative_prompt": "blurry",
        "params.seed": "42",
        "params.num_inference_steps": "20",
        "params.guidance_scale": "7.0",
        "params.width": "64",
        "params.height": "64",
        "params.sampler": "Euler a",
        "params.model": "embedded",
        "params.task": "txt2img",
        "params.batch_size": "2",
    }


def test_the_manifests_give_each_image_its_own_adherence_score(
    tmp_path: Path, gallery: Gallery, new_generation: NewFactory
) -> None:
    record = gallery.start(new_generation(prompt="a red circle", seed=42, batch_size=2))
    images = [
        ImageInput("output", Image.new("RGB", (32, 32), colour), seed=42 + i)
        for i, colour in enumerate(("red", "blue"))
    ]
    scored = {"score": 0.75, "method": "embedded-world", "images": [{"score": 1.0}, {"score": 0.5}]}
    gallery.finish(record.id, images=images, environment={}, timings={}, duration_ms=1, adherence=scored)
    unscored = gallery.start(new_generation(model="org/model", seed=7, batch_size=1))
    why = {"score": None, "method": None, "images": [], "reason": "no CLIP model is configured"}
    gallery.finish(unscored.id, images=images[:1], environment={}, timings={}, duration_ms=1, adherence=why)

    export_zip(gallery, [record.id, unscored.id], tmp_path / "out.zip")

    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
        table = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [(e["adherence"], e["adherence_method"]) for e in manifest] == [
        (1.0, "embedded-world"),
        (0.5, "embedded-world"),
        (None, None),
    ]
    assert [(row["adherence"], row["adherence_method"]) for row in table] == [
        ("1.0", "embedded-world"),
        ("0.5", "embedded-world"),
        ("", ""),
    ]


def test_the_same_export_gives_the_same_bytes(
    tmp_path: Path, gallery: Gallery, records: list[GenerationRecord]
) -> None:
    ids = [record.id for record in records]
    export_zip(gallery, ids, tmp_path / "a.zip")
    export_zip(gallery, ids, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_board_export_pages_through_its_members(
    tmp_path: Path, gallery: Gallery, records: list[GenerationRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_PAGE", 1)  # one record per search page, so the cursor is followed
    first, _, third = records
    gallery.create_board("picks", by="ann")
    gallery.add_to_board("picks", [third.id, first.id])

    exported = export_board(gallery, "picks", tmp_path / "picks.zip")

    assert (exported.generations, exported.images) == (2, 3)
    with zipfile.ZipFile(tmp_path / "picks.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert [entry["generation_id"] for entry in manifest] == [first.id, first.id, third.id]


def test_unknown_or_empty_board_writes_nothing(
    tmp_path: Path, gallery: Gallery, records: list[GenerationRecord]
) -> None:
    with pytest.raises(RecordNotFound, match="Board 'nope' does not exist."):
        export_board(gallery, "nope", tmp_path / "x.zip")
    gallery.create_board("empty", by="ann")
    with pytest.raises(StorageError, match="Board 'empty' is empty"):
        export_board(gallery, "empty", tmp_path / "x.zip")
    with pytest.raises(RecordNotFound):
        export_zip(gallery, [records[0].id, 999], tmp_path / "x.zip")
    with pytest.raises(StorageError, match="at least one"):
        export_zip(gallery, [], tmp_path / "x.zip")
    with pytest.raises(StorageError, match="does not exist; create it first"):
        export_zip(gallery, [records[0].id], tmp_path / "no" / "x.zip")
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix in (".zip", ".partial")) == []


def test_a_failure_midway_leaves_no_half_zip_and_keeps_the_old_one(
    tmp_path: Path, gallery: Gallery, records: list[GenerationRecord]
) -> None:
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    out = out_dir / "out.zip"
    out.write_bytes(b"an earlier export")
    # The last image's file changes on disk after it was recorded.
    gallery.path(records[2].outputs[0].path).write_bytes(b"not the recorded bytes")

    with pytest.raises(StorageError, match=f"generation {records[2].id} no longer matches its sha256"):
        export_zip(gallery, [record.id for record in records], out)

    assert out.read_bytes() == b"an earlier export"
    assert [path.name for path in out_dir.iterdir()] == ["out.zip"]


def test_generations_without_images_are_left_out_and_reported(
    tmp_path: Path, gallery: Gallery, new_generation: NewFactory, records: list[GenerationRecord]
) -> None:
    failed = gallery.start(new_generation(prompt="never made"))
    gallery.fail(failed.id, status="failed", error="boom", environment={}, timings={}, duration_ms=None)

    exported = export_zip(gallery, [failed.id, records[1].id], tmp_path / "out.zip")

    assert (exported.generations, exported.images, exported.skipped) == (1, 1, (failed.id,))


@pytest.mark.parametrize(("image_format", "pillow"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_a_jpeg_or_webp_export_carries_each_images_parameters_in_exif(
    tmp_path: Path, gallery: Gallery, records: list[GenerationRecord], image_format: str, pillow: str
) -> None:
    first = records[0]
    out = tmp_path / "out.zip"

    exported = export_zip(gallery, [first.id], out, image_format=image_format)

    suffix = {"jpeg": "jpg", "webp": "webp"}[image_format]
    names = [f"{first.id}-0-42.{suffix}", f"{first.id}-1-43.{suffix}"]
    assert exported.images == 2
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == [*names, "manifest.json", "manifest.csv"]
        for name, image in zip(names, first.outputs):
            data = archive.read(name)
            with Image.open(io.BytesIO(data)) as opened:
                assert opened.format == pillow and opened.size == (32, 32)
            png = read_png_metadata(gallery.path(image.path))
            # The same parameters text as the gallery's PNG, this image's own seed in it.
            assert read_png_metadata(io.BytesIO(data)) == {"parameters": png["parameters"]}
            assert f"Seed: {image.seed}," in png["parameters"]
        manifest = json.loads(archive.read("manifest.json"))
    assert [row["file"] for row in manifest] == names
    assert [row["sha256"] for row in manifest] == [image.sha256 for image in first.outputs]
    with pytest.raises(StorageError, match="image_format must be one of png, jpeg, webp, not 'gif'."):
        export_zip(gallery, [first.id], tmp_path / "gif.zip", image_format="gif")
    assert not (tmp_path / "gif.zip").exists()


def test_storage_export_imports_no_torch_gradio_or_pipelines() -> None:
    code = "import sys, storage.export; print(sorted({'torch', 'gradio', 'pipelines', 'diffusers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
