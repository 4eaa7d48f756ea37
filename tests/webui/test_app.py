"""The launched app, called the way an API client calls it (gradio_client)."""

import hashlib
import re
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
        "task": "txt2img",
        "prompt": "a yellow square on a black background",
        "negative_prompt": "blurry",
        "sampler": "Euler a",
        "num_inference_steps": 3,
        "guidance_scale": 6.0,
        "width": 64,
        "height": 72,
        "seed": 77,
        "batch_size": 2,
        "model": "embedded",
        "variation_seed": None,
        "variation_strength": 0.0,
        "ip_adapter_image": None,
        "ip_adapter_scale": 0.6,
        "loras": [],
        "refiner": None,
        "refiner_switch": 0.8,
    }
    assert f"Record #{record.id}" in summary
    # The files the client downloaded are the gallery's files, metadata and all.
    downloaded = [item["image"] for item in images]
    assert [sha256(path) for path in downloaded] == [image.sha256 for image in record.outputs]
    assert "Seed: 78" in read_png_metadata(downloaded[1])["parameters"]

    rerun_id, rerun_image, *_, family, params, verdict, note, download = client.predict(record.id, api_name="/rerun")
    assert "identical" in verdict
    assert f"Rerun of** #{record.id}" in family
    assert sha256(rerun_image) == record.outputs[0].sha256
    assert studio.gallery.get(rerun_id).parent_id == record.id


def test_review_search_and_variations_over_the_api(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    *_, details = client.predict(
        "a green triangle on an orange background", "", "Euler", 3, 5.0, 64, 64, 5, 1, api_name="/txt2img"
    )
    record_id = details["id"]

    client.predict(record_id, api_name="/star")
    client.predict(record_id, "on brand", api_name="/approve")
    client.predict(record_id, "spring, hero", api_name="/tag")
    client.predict(record_id, "Spring campaign", api_name="/add_to_board")
    record = studio.gallery.get(record_id)
    assert record.starred and record.review == "approved" and record.review_note == "on brand"
    assert record.tags == ("hero", "spring") and record.boards == ("Spring campaign",)

    # Search by a prompt word, with filters, finds it; another word does not.
    items, info = client.predict(
        "triangle orange",
        "everyone",
        "",
        "embedded",
        "any",
        "approved",
        True,
        "hero",
        "Spring campaign",
        "",
        "",
        "succeeded",
        api_name="/gallery_search",
    )
    # The embedded model scores its own pictures: the caption ends with the prompt adherence.
    [caption] = [item["caption"] for item in items]
    assert re.fullmatch(rf"#{record_id} · a green triangle on an orange background · adherence [01]\.\d\d", caption)
    assert "1–1 of 1" in info
    _, info = client.predict(
        "zebra", "everyone", "", "", "any", "any", False, "", "any", "", "", "succeeded", api_name="/gallery_search"
    )
    assert "of 0" in info

    # A cancelled generation has no image, yet the status filter finds it (with a placeholder tile).
    from pipelines.progress import CancelToken
    from pipelines.requests import Text2ImgRequest

    token = CancelToken()
    token.cancel()
    cancelled = studio.submit(
        Text2ImgRequest(prompt="a cancelled purple circle", width=64, height=64), user="ada", cancel=token
    )
    items, info = client.predict(
        "cancelled purple",
        "everyone",
        "",
        "",
        "any",
        "any",
        False,
        "",
        "any",
        "",
        "",
        "cancelled",
        api_name="/gallery_search",
    )
    assert [item["caption"] for item in items] == [f"#{cancelled.id} · a cancelled purple circle"]

    # New seeds: one child record with three new images.
    child_id, *_, verdict, _, _ = client.predict(record_id, 3, api_name="/variations")
    child = studio.gallery.get(child_id)
    assert child.parent_id == record_id and len(child.outputs) == 3
    assert child.seed != record.seed
    assert f"child of #{record_id}" in verdict

    # Send to tab fills every field from the record.
    sent = client.predict(record_id, api_name="/send_to_tab")
    # Seeds travel as text, so a 64-bit one reaches the browser exactly (issue 19).
    assert sent[0] == "a green triangle on an orange background" and sent[2] == "Euler" and sent[7] == "5"

    # Delete removes the record (single-user studio: the user may delete anything).
    client.predict(child_id, api_name="/delete")
    assert child_id not in [r.id for r in studio.gallery.list(limit=100)]


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


def test_import_a_png_fills_the_tab_and_export_a_board(launched, tmp_path):
    import zipfile

    from gradio_client import handle_file
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    studio, url = launched
    client = Client(url, verbose=False)
    info = PngInfo()
    info.add_text(
        "parameters",
        "a blue circle on a white background\nNegative prompt: blurry\n"
        "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x72, Clip skip: 2",
    )
    png = tmp_path / "a1111.png"
    Image.new("RGB", (64, 72), "white").save(png, pnginfo=info)
    *values, summary = client.predict(handle_file(str(png)), api_name="/import_png")
    assert values == ["a blue circle on a white background", "blurry", "DPM++ 2M Karras", 12, 6.5, 64, 72, "1234", 1]
    assert "automatic1111" in summary and "Clip skip" in summary

    *_, details = client.predict("a red square", "", "Euler", 2, 5.0, 64, 64, 8, 2, api_name="/txt2img")
    client.predict(details["id"], "Export me", api_name="/add_to_board")
    zipped = client.predict("Export me", api_name="/export")
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        assert {"manifest.json", "manifest.csv"} <= set(names)
        pngs = sorted(name for name in names if name.endswith(".png"))
        assert len(pngs) == 2
        shas = sorted(i.sha256 for i in studio.gallery.get(details["id"]).outputs)
        assert sorted(hashlib.sha256(archive.read(name)).hexdigest() for name in pngs) == shas


def test_send_an_imported_comfyui_img2img_to_its_tab(launched, tmp_path):
    """The import's task picks the tab, its fields are filled, and the picture it needs is asked for."""
    import json as json_module

    from gradio_client import handle_file
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    _, url = launched
    client = Client(url, verbose=False)
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 99, "steps": 10, "cfg": 6, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 0.5, "model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["12", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a green cube", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "cube.png", "upload": "image"}},
        "12": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
    }  # fmt: skip
    info = PngInfo()
    info.add_text("prompt", json_module.dumps(graph))
    png = tmp_path / "comfy.png"
    Image.new("RGB", (64, 64), "green").save(png, pnginfo=info)

    result = client.predict(handle_file(str(png)), api_name="/send_import")
    note = result[-1]
    # The client is handed no value for the tab switch itself. The img2img tab's fields come first among the
    # image tabs': prompt, negative, strength, then the settings row (the seed as text: 64-bit seeds).
    assert list(result[0:10]) == ["a green cube", "blurry", 0.5, "Euler", 20, 6.0, "99", 1, 512, 512]
    assert note == "Sent to **img2img**. Give it: image (the file used `cube.png`)."


def test_send_to_text_to_image_brings_the_style_controls_and_the_reference(launched):
    """A record's LoRAs, variation, refiner and reference image come back with its fields, so one change is one change."""
    from PIL import Image

    from pipelines.requests import ImageRef, Text2ImgRequest
    from storage import ImageInput
    from webui.studio import _new_generation

    studio, url = launched
    reference = Image.new("RGB", (32, 32), (10, 200, 30))
    request = Text2ImgRequest(
        prompt="a red circle",
        seed=5,
        width=64,
        height=64,
        loras=(("brand", 0.8), ("grain", 0.25)),
        variation_seed=9,
        variation_strength=0.2,
        ip_adapter_image=ImageRef.of(reference),
        ip_adapter_scale=0.9,
        refiner="org/some-refiner",
        refiner_switch=0.7,
    )
    # Stored as the queue stores a job, inputs and all (nothing has to run for the record to be sent).
    record = studio.gallery.enqueue(
        _new_generation(request, user="ada", revision=None, parent_id=None),
        inputs=[ImageInput(role=role, image=ref.image) for role, ref in request.input_images],
    )
    client = Client(url, verbose=False)
    sent = client.predict(record.id, api_name="/send_to_tab")
    fields, styles = sent[:9], sent[9:]  # the tab switch is not an API output
    assert fields[0] == "a red circle" and fields[7] == "5"
    variation_seed, variation_strength, names, weights, shown, scale, refiner, switch = styles
    assert (variation_seed, variation_strength) == ("9", 0.2)
    assert (names, weights, scale) == (["brand", "grain"], "0.8, 0.25", 0.9)
    assert (refiner, switch) == ("org/some-refiner", 0.7)
    with Image.open(shown["path"] if isinstance(shown, dict) else shown) as image:
        assert image.convert("RGB").tobytes() == reference.tobytes()


def test_a_64_bit_seed_over_the_api_is_kept_exactly(launched):
    """ComfyUI's seeds are 64-bit (issue 19): typed as text or sent as a number, none is rounded or replaced."""
    studio, url = launched
    client = Client(url, verbose=False)
    top = 2**64 - 1
    for sent in (str(top), top):
        images, summary, details = client.predict(
            "a red circle on a blue background", "", "DPM++ 2M SDE Karras", 3, 6.0, 64, 64, sent, 2, api_name="/txt2img"
        )
        record = studio.gallery.get(details["id"])
        # Image 1 wraps at 2**64; the sampler is one of issue 19's.
        assert (record.seed, record.params["seed"], record.sampler) == (top, top, "DPM++ 2M SDE Karras")
        assert [image.seed for image in record.outputs] == [top, 0]
        assert details["images"][0]["seed"] == top
        assert f"seed {top}, 0" in summary
        downloaded = [item["image"] for item in images]
        assert f"Seed: {top}," in read_png_metadata(downloaded[0])["parameters"]
    assert client.predict(record.id, api_name="/send_to_tab")[7] == str(top)
    rerun_id, *_, verdict, _, _ = client.predict(record.id, api_name="/rerun")
    assert "identical" in verdict
    assert studio.gallery.get(rerun_id).seed == top
    *_, variation_details = client.predict(
        "a red circle", "", "Euler", 3, 6.0, 64, 64, "-1", 1, 1, str(2**63 + 5), 0.3, api_name="/txt2img"
    )
    assert studio.gallery.get(variation_details["id"]).params["variation_seed"] == 2**63 + 5


def test_a_seed_that_is_not_a_whole_number_is_one_sentence(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    before = studio.gallery.count()
    for bad, shown in (("12abc", "'12abc'"), (str(2**64), str(2**64)), ("1e5", "'1e5'")):
        try:
            client.predict("a red circle", "", "Euler", 3, 6.0, 64, 64, bad, 1, api_name="/txt2img")
        except Exception as error:  # gradio_client raises AppError with the gr.Error message
            assert f"seed must be a whole number from 0 to {2**64 - 1}, or -1; got {shown}" in str(error)
        else:
            raise AssertionError(f"seed {bad!r} was accepted")
    assert studio.gallery.count() == before


def test_download_and_export_as_jpeg_or_webp_carry_the_parameters(launched):
    """Sites and tools that take no PNG get the same A1111 parameters text, in EXIF (issue 19)."""
    import zipfile

    from PIL import Image

    studio, url = launched
    client = Client(url, verbose=False)
    *_, details = client.predict("a red square", "", "Euler", 2, 5.0, 64, 64, 2**40, 1, api_name="/txt2img")
    record = studio.gallery.get(details["id"])
    expected = read_png_metadata(studio.gallery.path(record.outputs[0].path))["parameters"]
    assert f"Seed: {2**40}," in expected
    for shown, pillow in (("JPEG", "JPEG"), ("WebP", "WEBP")):
        path = client.predict(record.id, shown, api_name="/download_as")
        with Image.open(path) as image:
            assert image.format == pillow and image.size == (64, 64)
        assert read_png_metadata(path) == {"parameters": expected}
    client.predict(record.id, "Export as JPEG", api_name="/add_to_board")
    zipped = client.predict("Export as JPEG", "JPEG", api_name="/export")
    with zipfile.ZipFile(zipped) as archive:
        name = f"{record.id}-0-{2**40}.jpg"
        assert name in archive.namelist()
        assert read_png_metadata(archive.read(name)) == {"parameters": expected}
