"""The launched app, called the way an API client calls it (gradio_client)."""

import hashlib
from pathlib import Path

from gradio_client import Client

from storage.pngmeta import read_png_metadata


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_txt2img_then_rerun_over_the_api(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    assert {"/txt2img", "/rerun", "/cancel", "/gallery_page", "/gallery_record"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )

    images, summary, details = client.predict(
        "a yellow square on a black background", "blurry", "Euler a", 3, 6.0, 64, 72, 77, 2, api_name="/txt2img"
    )
    # The record holds exactly what was asked.
    record = studio.gallery.get(details["id"])
    assert record.params == {
        "task": "txt2img", "prompt": "a yellow square on a black background", "negative_prompt": "blurry",
        "sampler": "Euler a", "num_inference_steps": 3, "guidance_scale": 6.0, "width": 64, "height": 72,
        "seed": 77, "batch_size": 2, "model": "embedded",
    }
    assert f"Record #{record.id}" in summary
    # The files the client downloaded are the gallery's files, metadata and all.
    downloaded = [item["image"] for item in images]
    assert [sha256(path) for path in downloaded] == [image.sha256 for image in record.outputs]
    assert "Seed: 78" in read_png_metadata(downloaded[1])["parameters"]

    rerun_id, rerun_image, description, params, verdict = client.predict(record.id, api_name="/rerun")
    assert "identical" in verdict
    assert f"Rerun of** #{record.id}" in description
    assert sha256(rerun_image) == record.outputs[0].sha256
    assert studio.gallery.get(rerun_id).parent_id == record.id


def test_bad_input_is_a_clear_error_and_nothing_is_written(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    before = studio.gallery.count()
    try:
        client.predict("   ", "", "Euler", 3, 5.0, 64, 64, 1, 1, api_name="/txt2img")
    except Exception as error:  # gradio_client raises AppError with the gr.Error text
        assert "prompt must not be empty." in str(error)
    else:
        raise AssertionError("an empty prompt was accepted")
    assert studio.gallery.count() == before
