"""The studio service: request -> engine -> gallery, as the UI and CLI use it."""

import hashlib
import json

import pytest
from PIL import Image

from pipelines.errors import ModelError
from pipelines.progress import CancelToken
from pipelines.requests import Text2ImgRequest
from storage.pngmeta import read_png_metadata


def request(**changes):
    fields = {
        "prompt": "a red circle on a blue background",
        "width": 64,
        "height": 64,
        "num_inference_steps": 4,
        "seed": 21,
    }
    return Text2ImgRequest(**{**fields, **changes})


def test_submit_keeps_the_exact_request_and_its_images(studio):
    submitted = request(negative_prompt="green", batch_size=2, sampler="Euler a", guidance_scale=6.5)
    record = studio.submit(submitted, user="ada")
    stored = studio.gallery.get(record.id)
    assert stored.status == "succeeded"
    assert stored.params == submitted.to_dict()
    assert (stored.user, stored.task, stored.model, stored.prompt, stored.seed) == (
        "ada",
        "txt2img",
        "embedded",
        submitted.prompt,
        21,
    )
    assert [image.seed for image in stored.outputs] == [21, 22]
    assert stored.environment["device"] == "cpu" and stored.environment["torch"]
    assert stored.timings["total_ms"] >= stored.timings["run_ms"] > 0
    for image in stored.outputs:
        path = studio.gallery.path(image.path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == image.sha256
        assert Image.open(path).size == (64, 64)
        # An image dragged out of the gallery still says how it was made.
        chunks = read_png_metadata(path)
        assert f"Seed: {image.seed}" in chunks["parameters"]
        assert "Sampler: Euler a" in chunks["parameters"]
        assert json.loads(chunks["atelier"])["prompt"] == submitted.prompt


def test_rerun_reproduces_the_same_files_and_links_the_parent(studio):
    first = studio.submit(request(batch_size=2), user="ada")
    outcome = studio.rerun(first.id, user="bob")
    assert outcome.identical and outcome.differences == []
    assert outcome.record.parent_id == first.id
    assert outcome.record.user == "bob"
    assert [i.sha256 for i in outcome.record.outputs] == [i.sha256 for i in first.outputs]


def test_rerun_with_one_change_is_not_identical(studio):
    first = studio.submit(request(), user="ada")
    outcome = studio.rerun(first.id, user="ada", seed=22)
    assert not outcome.identical
    assert outcome.record.params["seed"] == 22 and outcome.record.parent_id == first.id


def test_cancel_is_recorded_as_cancelled_with_no_image(studio):
    token = CancelToken()
    token.cancel()
    record = studio.submit(request(), user="ada", cancel=token)
    assert record.status == "cancelled"
    assert record.images == ()
    assert not list((studio.settings.data_dir / "images").rglob("*.png"))


def test_a_model_that_cannot_load_writes_nothing(studio):
    with pytest.raises(ModelError, match="model must be 'embedded'"):
        studio.submit(request(model="no such model"), user="ada")
    assert studio.gallery.count() == 0


def test_a_crash_mid_generation_leaves_a_failed_record_and_no_file(studio):
    def explode(step, total):
        if step == 2:
            raise RuntimeError("GPU fell off the bus")

    with pytest.raises(RuntimeError):
        studio.submit(request(), user="ada", progress=explode)
    [record] = studio.gallery.list()
    assert record.status == "failed"
    assert "GPU fell off the bus" in record.error
    assert record.images == ()
    assert not list((studio.settings.data_dir / "images").rglob("*.png"))


def test_every_generation_gets_its_prompt_adherence_scored_by_the_worker(studio):
    from PIL import Image as PILImage

    from pipelines.embedded.world import classify

    record = studio.submit(request(prompt="a yellow square on a black background", batch_size=2), user="ada")

    stored = studio.gallery.get(record.id)
    detail = stored.adherence_detail
    assert detail["method"] == "embedded-world" and len(detail["images"]) == 2
    for image, scored in zip(stored.outputs, detail["images"], strict=True):
        # What the score says was seen is what the stored picture shows.
        reading = classify(PILImage.open(studio.gallery.path(image.path)))
        assert scored["checks"]["shape"]["seen"] == reading.shape
        assert scored["checks"]["background"]["seen"] == reading.background
    assert stored.adherence == pytest.approx(sum(i["score"] for i in detail["images"]) / 2, abs=1e-3)
    assert stored.timings["adherence_ms"] >= 0
    # A queued job is scored by the GPU worker that ran it, the same way.
    ticket = studio.workers.enqueue(request(prompt="a red circle on a blue background", seed=3), user="ada")
    queued = ticket.wait(studio.gallery, waiting=lambda place: None, progress=lambda step, total: None)
    assert queued.adherence_detail["method"] == "embedded-world" and 0 <= queued.adherence <= 1
    assert [r.id for r in studio.gallery.search(order="adherence", min_adherence=0).records][0] in (
        record.id,
        queued.id,
    )
