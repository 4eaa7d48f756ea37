from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import text

from storage import (
    Gallery,
    GenerationRecord,
    ImageInput,
    NewGeneration,
    RecordNotFound,
    StorageError,
)
from storage.db import make_engine
from storage.pngmeta import read_png_metadata

NewFactory = Callable[..., NewGeneration]
ENVIRONMENT = {"torch": "2.5.1", "diffusers": "0.32.0", "device": "cpu", "dtype": "float32"}
TIMINGS = {"load_s": 0.5, "run_s": 1.25}


def red() -> Image.Image:
    return Image.new("RGB", (64, 64), "red")


def blue() -> Image.Image:
    return Image.new("RGB", (64, 64), "blue")


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def image_files(data_dir: Path) -> set[Path]:
    """Every file the gallery writes for images: final, thumbnail and pending."""
    return set().union(*(files_under(data_dir / folder) for folder in ("images", "thumbs", "pending")))


def image_rows(data_dir: Path) -> int:
    engine = make_engine(f"sqlite:///{data_dir}/gallery.db")
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT count(*) FROM images"))
    finally:
        engine.dispose()


def finish_with(gallery: Gallery, generation_id: int, images: list[ImageInput]) -> GenerationRecord:
    return gallery.finish(generation_id, images=images, environment=ENVIRONMENT, timings=TIMINGS, duration_ms=1250)


def test_start_records_a_running_generation(gallery: Gallery, new_generation: NewFactory) -> None:
    new = new_generation()

    record = gallery.start(new)

    assert record.status == "running"
    assert record.finished_at is None and record.images == ()
    assert record.created_at.tzinfo is not None
    for field in fields(NewGeneration):
        assert getattr(record, field.name) == getattr(new, field.name), field.name
    assert gallery.get(record.id) == record


def test_round_trip_of_a_finished_generation(tmp_path: Path, gallery: Gallery, new_generation: NewFactory) -> None:
    new = new_generation(seed=2**32 - 1, batch_size=2)
    started = gallery.start(new)
    input_image = Image.new("RGB", (640, 320), "green")

    finished = finish_with(
        gallery,
        started.id,
        [
            ImageInput("output", red(), seed=2**32 - 1),
            ImageInput("input", input_image),
            ImageInput("output", blue(), seed=0),
        ],
    )

    assert gallery.get(started.id) == finished
    assert finished.status == "succeeded" and finished.error is None
    assert finished.created_at == started.created_at
    assert finished.finished_at is not None and finished.finished_at >= finished.created_at
    assert (finished.params, finished.environment, finished.timings) == (new.params, ENVIRONMENT, TIMINGS)
    assert (finished.seed, finished.duration_ms, finished.model_revision) == (2**32 - 1, 1250, "main")
    assert [(i.role, i.position, i.seed) for i in finished.images] == [
        ("output", 0, 2**32 - 1),
        ("output", 1, 0),
        ("input", 0, None),
    ]
    assert [i.seed for i in finished.outputs] == [2**32 - 1, 0]
    for image in finished.images:
        data = gallery.path(image.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == image.sha256
        assert gallery.path(image.path) == tmp_path.resolve() / image.path
        assert image.generation_id == started.id
        with Image.open(gallery.path(image.thumb_path)) as thumb:
            assert max(thumb.size) <= 256
    assert (finished.images[2].width, finished.images[2].height) == (640, 320)
    with Image.open(gallery.path(finished.images[2].thumb_path)) as thumb:
        assert thumb.size == (256, 128)


def test_outputs_carry_their_parameters_and_inputs_do_not(gallery: Gallery, new_generation: NewFactory) -> None:
    new = new_generation()
    generation = gallery.start(new)

    finished = finish_with(
        gallery, generation.id, [ImageInput("output", red(), seed=42), ImageInput("output", blue(), seed=43)]
    )
    with_input = gallery.start(new_generation(task="img2img", strength=0.5))
    input_record = finish_with(gallery, with_input.id, [ImageInput("input", blue())])

    for image in finished.outputs:
        chunks = read_png_metadata(gallery.path(image.path))
        assert f"Seed: {image.seed}," in chunks["parameters"]
        assert json.loads(chunks["atelier"]) == {**new.params, "image_seed": image.seed}
    assert read_png_metadata(gallery.path(input_record.images[0].path)) == {}


def test_list_is_newest_first_with_keyset_pages(gallery: Gallery, new_generation: NewFactory) -> None:
    ids = [gallery.start(new_generation(prompt=f"prompt {n}")).id for n in range(7)]

    pages: list[list[int]] = []
    before_id = None
    while page := gallery.list(limit=3, before_id=before_id):
        pages.append([record.id for record in page])
        before_id = page[-1].id

    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]
    assert gallery.count() == 7
    assert gallery.list()[0] == gallery.get(ids[-1])
    assert gallery.list(limit=2, before_id=ids[0]) == []


def test_list_and_count_filter_by_status(gallery: Gallery, new_generation: NewFactory) -> None:
    done = finish_with(gallery, gallery.start(new_generation()).id, [ImageInput("output", red(), seed=42)])
    running = gallery.start(new_generation())

    assert [r.id for r in gallery.list(status="succeeded")] == [done.id]
    assert [r.id for r in gallery.list(status="running")] == [running.id]
    assert (gallery.count(status="succeeded"), gallery.count(status="failed"), gallery.count()) == (1, 0, 2)
    with pytest.raises(
        StorageError,
        match="status must be one of queued, running, succeeded, failed, cancelled, interrupted, not 'done'",
    ):
        gallery.list(status="done")


def test_list_returns_each_generations_images(gallery: Gallery, new_generation: NewFactory) -> None:
    first = gallery.start(new_generation())
    finish_with(gallery, first.id, [ImageInput("output", red(), seed=42)])
    second = gallery.start(new_generation())

    listed = gallery.list()

    assert [(r.id, len(r.images)) for r in listed] == [(second.id, 0), (first.id, 1)]
    assert listed[1] == gallery.get(first.id)


def test_cancelled_generation_writes_no_image(tmp_path: Path, gallery: Gallery, new_generation: NewFactory) -> None:
    generation = gallery.start(new_generation())

    cancelled = gallery.fail(
        generation.id, status="cancelled", error=None, environment=ENVIRONMENT, timings=TIMINGS, duration_ms=10
    )

    assert (cancelled.status, cancelled.images, cancelled.duration_ms) == ("cancelled", (), 10)
    assert cancelled.finished_at is not None
    assert gallery.get(generation.id) == cancelled
    assert image_rows(tmp_path) == 0
    assert image_files(tmp_path) == set()


def test_failed_generation_keeps_its_error(gallery: Gallery, new_generation: NewFactory) -> None:
    generation = gallery.start(new_generation())

    failed = gallery.fail(
        generation.id, status="failed", error="CUDA out of memory.", environment={}, timings={}, duration_ms=None
    )

    assert (failed.status, failed.error) == ("failed", "CUDA out of memory.")


def test_identical_images_share_one_file(tmp_path: Path, gallery: Gallery, new_generation: NewFactory) -> None:
    first = finish_with(gallery, gallery.start(new_generation()).id, [ImageInput("input", red())])
    second = finish_with(gallery, gallery.start(new_generation()).id, [ImageInput("input", red())])

    assert first.images[0].id != second.images[0].id
    assert first.images[0].path == second.images[0].path
    assert files_under(tmp_path / "images") == {gallery.path(first.images[0].path)}
    assert image_rows(tmp_path) == 2


def test_a_rerun_with_the_same_pixels_gives_the_same_file(gallery: Gallery, new_generation: NewFactory) -> None:
    original = gallery.start(new_generation())
    original = finish_with(gallery, original.id, [ImageInput("output", red(), seed=42)])
    rerun = gallery.start(new_generation(parent_id=original.id))
    rerun = finish_with(gallery, rerun.id, [ImageInput("output", red(), seed=42)])

    assert rerun.parent_id == original.id
    assert rerun.outputs[0].sha256 == original.outputs[0].sha256


def test_get_names_the_missing_generation(gallery: Gallery) -> None:
    with pytest.raises(RecordNotFound, match=r"^Generation 12 does not exist\.$"):
        gallery.get(12)


def test_start_refuses_a_missing_parent(gallery: Gallery, new_generation: NewFactory) -> None:
    with pytest.raises(RecordNotFound, match=r"Parent generation 5 does not exist\."):
        gallery.start(new_generation(parent_id=5))
    assert gallery.count() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"user": ""}, "user must not be empty."),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"guidance_scale": float("nan")}, "params must hold only JSON values"),
    ],
)
def test_start_refuses_bad_input(
    gallery: Gallery, new_generation: NewFactory, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(StorageError, match=message):
        gallery.start(new_generation(**overrides))
    assert gallery.count() == 0


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (lambda: [ImageInput("output", red(), seed=1), ImageInput("thumbnail", red())], "Image 2 has role 'thumbnail'"),
        (lambda: [ImageInput("output", red())], "Output image 1 has no seed"),
        (lambda: [ImageInput("input", red()), ImageInput("mask", Image.new("CMYK", (8, 8)))], "Image 2 has mode CMYK"),
    ],
)
def test_finish_refuses_bad_images_and_writes_nothing(
    tmp_path: Path,
    gallery: Gallery,
    new_generation: NewFactory,
    images: Callable[[], list[ImageInput]],
    message: str,
) -> None:
    generation = gallery.start(new_generation())

    with pytest.raises(StorageError, match=message):
        finish_with(gallery, generation.id, images())

    assert gallery.get(generation.id) == generation
    assert image_rows(tmp_path) == 0
    assert image_files(tmp_path) == set()


def test_a_failure_after_staging_removes_the_staged_files(
    tmp_path: Path, gallery: Gallery, new_generation: NewFactory
) -> None:
    new = new_generation()
    # Without a sampler no parameters chunk can be written, which is found only
    # when the output is encoded, after the input has been staged.
    generation = gallery.start(replace(new, params={k: v for k, v in new.params.items() if k != "sampler"}))

    with pytest.raises(ValueError, match="params lacks sampler"):
        finish_with(gallery, generation.id, [ImageInput("input", red()), ImageInput("output", blue(), seed=1)])

    assert gallery.get(generation.id) == generation
    assert image_rows(tmp_path) == 0
    assert image_files(tmp_path) == set()


def test_finish_refuses_a_generation_that_is_not_running(
    tmp_path: Path, gallery: Gallery, new_generation: NewFactory
) -> None:
    generation = gallery.start(new_generation())
    cancelled = gallery.fail(
        generation.id, status="cancelled", error=None, environment={}, timings={}, duration_ms=None
    )

    with pytest.raises(StorageError, match=r"Generation 1 is already cancelled; only a running one can end\."):
        finish_with(gallery, generation.id, [ImageInput("output", red(), seed=42)])
    with pytest.raises(RecordNotFound, match=r"Generation 99 does not exist\."):
        finish_with(gallery, 99, [ImageInput("output", red(), seed=42)])

    assert gallery.get(generation.id) == cancelled
    assert image_rows(tmp_path) == 0
    assert image_files(tmp_path) == set()


def test_fail_refuses_an_unknown_status(gallery: Gallery, new_generation: NewFactory) -> None:
    generation = gallery.start(new_generation())

    with pytest.raises(StorageError, match=r"status must be one of failed, cancelled, not 'succeeded'\."):
        gallery.fail(generation.id, status="succeeded", error=None, environment={}, timings={}, duration_ms=None)

    assert gallery.get(generation.id) == generation


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "images/../../gallery.db"])
def test_path_refuses_escapes(gallery: Gallery, relative: str) -> None:
    with pytest.raises(ValueError):
        gallery.path(relative)


def test_reopening_keeps_everything(tmp_path: Path, gallery: Gallery, new_generation: NewFactory) -> None:
    finished = finish_with(gallery, gallery.start(new_generation()).id, [ImageInput("output", red(), seed=42)])
    gallery.close()

    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as reopened:
        assert reopened.get(finished.id) == finished
        assert reopened.path(finished.images[0].path).exists()


def test_threads_landing_the_same_image_share_one_file(
    tmp_path: Path, gallery: Gallery, new_generation: NewFactory
) -> None:
    def run(seed: int) -> GenerationRecord:
        generation = gallery.start(new_generation(seed=seed))
        return finish_with(
            gallery, generation.id, [ImageInput("input", red()), ImageInput("output", blue(), seed=seed)]
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        records = list(pool.map(run, range(8)))

    assert {r.status for r in records} == {"succeeded"}
    assert len({r.images[1].path for r in records}) == 1  # the shared input
    assert len(files_under(tmp_path / "images")) == 1 + 8
    assert files_under(tmp_path / "pending") == set()
