"""The AUTOMATIC1111-compatible API (/sdapi/v1), called by the `webuiapi` client from PyPI and by raw requests,
against one served studio on the embedded model. Every result must be a gallery record that reruns identically."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageDraw

from storage.pngmeta import read_png_metadata

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def api(launched) -> webuiapi.WebUIApi:
    _, url = launched
    return webuiapi.WebUIApi(baseurl=f"{url}sdapi/v1", sampler="Euler", steps=3)


@pytest.fixture(scope="module")
def raw(launched):
    _, url = launched
    with httpx.Client(base_url=f"{url}sdapi/v1/", timeout=120) as client:
        yield client


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def photo() -> Image.Image:
    image = Image.new("RGB", (64, 64), (20, 40, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    return image


def assert_reruns_identically(studio, record_id: int) -> None:
    outcome = studio.rerun(record_id, user="ada")
    assert outcome.identical, outcome.differences
    assert outcome.record.parent_id == record_id


def test_txt2img_batches_land_in_the_gallery_and_rerun_identically(launched, api) -> None:
    studio, _ = launched
    result = api.txt2img(prompt=PROMPT, negative_prompt="blurry", seed=41, width=64, height=64, batch_size=2, n_iter=2)

    info = result.info
    assert len(result.images) == 4
    assert info["all_seeds"] == [41, 42, 43, 44]
    assert (info["seed"], info["steps"], info["sampler_name"], info["width"], info["height"]) == (
        41,
        3,
        "Euler",
        64,
        64,
    )
    assert info["not_supported"] == {}
    ids = result.json["generation_ids"]
    assert len(ids) == 2 and result.json["generation_id"] == ids[0] == info["generation_id"]
    records = [studio.gallery.get(i) for i in ids]
    assert [r.status for r in records] == ["succeeded", "succeeded"]
    assert [(r.user, r.task, r.prompt, r.negative_prompt, r.batch_size) for r in records] == [
        ("ada", "txt2img", PROMPT, "blurry", 2)
    ] * 2
    # The images are the gallery's own files, byte for byte, metadata included.
    sent = [base64.b64decode(image) for image in result.json["images"]]
    assert [sha256(data) for data in sent] == [image.sha256 for r in records for image in r.outputs]
    chunks = read_png_metadata(sent[3])
    assert "Seed: 44" in chunks["parameters"] and json.loads(chunks["atelier"])["image_seed"] == 44
    assert info["infotexts"][3] == chunks["parameters"]
    assert result.parameters["prompt"] == PROMPT
    assert_reruns_identically(studio, ids[1])


def test_the_same_request_twice_gives_the_same_pixels(raw) -> None:
    body = {"prompt": PROMPT, "seed": 7, "steps": 3, "width": 64, "height": 64, "sampler_name": "DPM++ 2M"}
    first, second = raw.post("txt2img", json=body), raw.post("txt2img", json=body)

    assert first.status_code == second.status_code == 200
    assert first.json()["images"] == second.json()["images"]
    assert first.json()["generation_id"] != second.json()["generation_id"]
    # "DPM++ 2M" with the automatic schedule is A1111's Karras variant.
    assert json.loads(first.json()["info"])["sampler_name"] == "DPM++ 2M Karras"


def test_img2img_with_a_mask_inpaints_only_the_mask(launched, api) -> None:
    studio, _ = launched
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)  # the left half is regenerated

    result = api.img2img(
        images=[photo()], mask_image=mask, prompt="a green background", seed=3, width=64, height=64,
        denoising_strength=0.9, mask_blur=2, inpaint_full_res=False,
    )  # fmt: skip

    record = studio.gallery.get(result.json["generation_id"])
    assert (record.task, record.status, record.params["mask_feather"], record.params["strength"]) == (
        "inpaint", "succeeded", 2, 0.9
    )  # fmt: skip
    out = np.asarray(result.image.convert("RGB"))
    kept = np.asarray(photo())
    assert (out[:, 32:] == kept[:, 32:]).all()  # every pixel outside the mask is the original's
    assert (out[:, :28] != kept[:, :28]).any()
    # webuiapi sends inpainting_fill 0 ("fill"); Atelier starts from the original and says so.
    assert "inpainting_fill" in result.info["not_supported"]
    assert_reruns_identically(studio, record.id)


def test_inverted_mask_and_plain_img2img(launched, raw) -> None:
    studio, _ = launched
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    body = {
        "init_images": [f"data:image/png;base64,{b64(photo())}"],
        "mask": b64(mask),
        "inpainting_mask_invert": 1,
        "prompt": "a green background",
        "steps": 3,
        "seed": 4,
        "sampler_name": "Euler",
    }
    inverted = raw.post("img2img", json=body)
    assert inverted.status_code == 200, inverted.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(inverted.json()["images"][0]))).convert("RGB"))
    assert (out[:, :32] == np.asarray(photo())[:, :32]).all()  # now the left half is kept

    plain = raw.post("img2img", json={**body, "mask": None, "denoising_strength": 0.5, "resize_mode": 1})
    record = studio.gallery.get(plain.json()["generation_id"])
    assert (record.task, record.params["strength"], record.params["resize_mode"]) == ("img2img", 0.5, "crop")
    assert plain.json()["parameters"]["init_images"] is None  # include_init_images was not asked for


def test_a_controlnet_unit_steers_through_alwayson_scripts(launched, api) -> None:
    studio, _ = launched
    unit = webuiapi.ControlNetUnit(
        image=photo(), module="canny", model="embedded-canny", weight=0.8, threshold_a=90, threshold_b=180,
        guidance_start=0.1, guidance_end=0.9,
    )  # fmt: skip

    result = api.txt2img(prompt=PROMPT, seed=9, width=64, height=64, controlnet_units=[unit])

    record = studio.gallery.get(result.json["generation_id"])
    assert record.task == "controlnet" and record.status == "succeeded"
    (control,) = record.params["controls"]
    assert control["controlnet"] == "embedded-canny" and control["preprocessor"] == "canny"
    assert control["preprocessor_params"] == {"low_threshold": 90, "high_threshold": 180}
    assert (control["conditioning_scale"], control["guidance_start"], control["guidance_end"]) == (0.8, 0.1, 0.9)
    assert {image.role for image in record.images} >= {"control_source", "control", "output"}
    assert_reruns_identically(studio, record.id)


def test_script_names_match_in_any_case_and_extension_model_names_map(launched, raw) -> None:
    studio, _ = launched
    unit = {"image": b64(photo()), "module": "none", "model": "None", "enabled": True}
    response = raw.post(
        "txt2img",
        json={
            "prompt": PROMPT,
            "steps": 2,
            "width": 64,
            "height": 64,
            "alwayson_scripts": {"controlnet": {"args": [unit]}},
        },
    )
    assert response.status_code == 200, response.text
    record = studio.gallery.get(response.json()["generation_id"])
    assert record.params["controls"][0]["controlnet"] == "embedded-canny"
    assert "alwayson_scripts.controlnet.args[0].model" in json.loads(response.json()["info"])["not_supported"]


def test_models_samplers_and_setting_the_model(launched, api, raw) -> None:
    studio, _ = launched
    assert "embedded" in api.util_get_model_names()
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras"} <= set(api.util_get_sampler_names())
    assert {"automatic", "uniform", "karras"} <= set(api.util_get_scheduler_names())

    api.util_set_model("embedded")
    assert api.util_get_current_model() == "embedded"
    refused = raw.post("options", json={"sd_model_checkpoint": "no-such-model.safetensors [abcdef1234]"})
    assert refused.status_code == 422 and "sd_model_checkpoint must be one of embedded" in refused.json()["detail"]
    # A1111's titles carry a hash; the name alone is what matters here.
    response = raw.post(
        "txt2img",
        json={"prompt": PROMPT, "steps": 2, "width": 64, "height": 64,
              "override_settings": {"sd_model_checkpoint": "embedded [0123456789]", "CLIP_stop_at_last_layers": 2}},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["sd_model_name"] == "embedded"
    assert "override_settings.CLIP_stop_at_last_layers" in info["not_supported"]
    assert raw.get("loras").json() == []
    assert set(raw.get("memory").json()) == {"ram", "cuda"}


def test_png_info_reads_what_a_result_carries(api) -> None:
    result = api.txt2img(prompt=PROMPT, seed=12, width=64, height=64)

    read = api.png_info(result.image)

    assert read.info == result.info["infotexts"][0]
    assert read.json["parameters"]["Seed"] == "12" and read.json["parameters"]["Prompt"] == PROMPT
    assert json.loads(read.json["items"]["atelier"])["seed"] == 12


def test_progress_then_interrupt_ends_the_run_as_cancelled(launched, api) -> None:
    studio, _ = launched
    assert api.get_progress()["state"]["job_count"] == 0
    done: dict = {}
    runner = threading.Thread(
        target=lambda: done.setdefault("result", api.txt2img(prompt=PROMPT, seed=1, steps=150, width=64, height=64))
    )
    runner.start()
    deadline = time.monotonic() + 120
    while (progress := api.get_progress())["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1

    api.interrupt()
    runner.join(120)

    result = done["result"]
    assert result.images == [] and result.info["statuses"] == ["cancelled"]
    assert studio.gallery.get(result.json["generation_id"]).status == "cancelled"
    assert api.get_progress()["state"]["job_count"] == 0


def test_a_lora_in_the_prompt_is_applied_by_name(launched, raw) -> None:
    from .conftest import save_lora

    studio, _ = launched
    folder = studio.settings.loras_folder
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(folder / "house-style.safetensors", studio.engine.load("embedded").base, seed=3)
    body = {"prompt": f"{PROMPT}, <lora:house-style:0.5>", "seed": 2, "steps": 2, "width": 64, "height": 64}

    response = raw.post("txt2img", json=body)

    assert response.status_code == 200, response.text
    record = studio.gallery.get(response.json()["generation_id"])
    assert (record.prompt, record.params["loras"]) == (PROMPT, [["house-style", 0.5]])
    assert [item["name"] for item in raw.get("loras").json()] == ["house-style"]
    missing = raw.post("txt2img", json={**body, "prompt": "<lora:nope:1> a circle"})
    assert missing.status_code == 422 and "'nope'" in missing.json()["detail"]


def test_requests_shaped_as_other_clients_send_them(launched, raw) -> None:
    studio, _ = launched
    body = {
        "prompt": PROMPT,
        "steps": 2,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler a",
        "scheduler": "Automatic",
        "some_extension_field": {"whatever": [1, 2]},
        "restore_faces": True,
        "enable_hr": True,
        "alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}},
    }
    response = raw.post("txt2img", json=body, headers={"Authorization": ""})

    assert response.status_code == 200, response.text
    assert set(json.loads(response.json()["info"])["not_supported"]) == {
        "restore_faces", "enable_hr", "alwayson_scripts.ADetailer"
    }  # fmt: skip
    assert studio.gallery.get(response.json()["generation_id"]).user == "ada"


def bomb() -> bytes:
    """A PNG whose valid header says 60000x60000 pixels: 10 GB once decoded, a few dozen bytes sent."""
    header = b"IHDR" + (60_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    chunk = len(header[4:]).to_bytes(4, "big") + header + zlib.crc32(header).to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


@pytest.mark.parametrize(
    ("route", "changes", "field"),
    [
        ("img2img", {"init_images": [base64.b64encode(b"not an image at all").decode()]}, "init_images[0]"),
        ("img2img", {"init_images": [base64.b64encode(bomb()).decode()]}, "init_images[0] must have at most"),
        ("img2img", {"init_images": ["https://example.com/cat.png"]}, "init_images[0]"),
        ("img2img", {"init_images": ["%%%%"]}, "init_images[0]"),
        ("img2img", {"init_images": []}, "init_images"),
        ("img2img", {"mask": "data:text/plain,hello"}, "mask"),
        ("txt2img", {"steps": "many"}, "steps"),
        ("txt2img", {"steps": 1000}, "steps"),
        ("txt2img", {"cfg_scale": 99}, "cfg_scale"),
        ("txt2img", {"width": 100_000}, "width"),
        ("txt2img", {"seed": -5}, "seed"),
        ("txt2img", {"n_iter": 0}, "n_iter"),
        ("txt2img", {"sampler_name": "DPM++ 9M Quantum"}, "sampler_name"),
        ("txt2img", {"prompt": ["a", "list"]}, "prompt"),
        ("txt2img", {"alwayson_scripts": {"ControlNet": {"args": [{"module": "canny"}]}}}, "image"),
        (
            "txt2img",
            {"alwayson_scripts": {"ControlNet": {"args": [{"image": b64(photo()), "module": "telepathy"}]}}},
            "args[0].module",
        ),
    ],
)
def test_hostile_input_is_refused_naming_the_field_and_nothing_is_written(launched, raw, route, changes, field) -> None:
    studio, _ = launched
    before = studio.gallery.count()
    body = {"prompt": PROMPT, "steps": 2, "width": 64, "height": 64, "init_images": [b64(photo())], **changes}

    response = raw.post(route, json=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and field in detail
    assert studio.gallery.count() == before
    assert raw.get("sd-models").status_code == 200  # still serving


def test_not_json_and_unknown_routes(raw, launched) -> None:
    _, url = launched
    broken = raw.post("txt2img", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["detail"]
    missing = raw.post("extra-single-image", json={})
    assert missing.status_code == 404
    assert "POST /sdapi/v1/txt2img" in missing.json()["supported"]
    assert "extra-single-image" in missing.json()["detail"]
    docs = httpx.get(f"{url}docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{url}openapi.json").json()
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info"} <= set(schema["paths"])


def test_inpainting_only_the_masked_area_and_controlnet_inpainting(launched, raw) -> None:
    studio, _ = launched
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    base = {"init_images": [b64(photo())], "mask": b64(mask), "prompt": "a green background", "steps": 2, "seed": 1}

    cropped = raw.post("img2img", json={**base, "inpaint_full_res": True, "inpaint_full_res_padding": 8})
    assert cropped.status_code == 200, cropped.text
    assert studio.gallery.get(cropped.json()["generation_id"]).params["padding_mask_crop"] == 8

    unit = {"module": "canny", "model": "control_v11p_sd15_canny", "weight": 0.5}  # the extension's file name
    steered = raw.post(
        "img2img",
        json={**base, "alwayson_scripts": {"ControlNet": {"args": [{**unit, "model": "embedded-canny"}]}}},
    )
    assert steered.status_code == 200, steered.text
    record = studio.gallery.get(steered.json()["generation_id"])
    assert record.task == "controlnet" and {"input", "mask", "control_source"} <= {i.role for i in record.images}
    assert record.params["controls"][0]["conditioning_scale"] == 0.5
    assert_reruns_identically(studio, record.id)


def test_variation_seeds_from_subseed(launched, raw) -> None:
    body = {"prompt": PROMPT, "steps": 2, "width": 64, "height": 64, "seed": 2, "batch_size": 2, "n_iter": 2}
    varied = raw.post("txt2img", json={**body, "subseed": 5, "subseed_strength": 0.3}).json()
    info = json.loads(varied["info"])
    assert (info["all_seeds"], info["all_subseeds"], info["subseed_strength"]) == ([2, 3, 4, 5], [5, 6, 7, 8], 0.3)
    assert "Variation seed: 8" in info["infotexts"][3]
    # Strength 0 gives exactly the seed's own image; 1 the variation seed's.
    plain = raw.post("txt2img", json=body).json()
    assert raw.post("txt2img", json={**body, "subseed": 5, "subseed_strength": 0.0}).json()["images"] == plain["images"]
    assert varied["images"] != plain["images"]


def test_a_body_too_large_is_refused_before_it_is_read(launched) -> None:
    from webui.sdapi import MAX_BODY_BYTES

    _, url = launched
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        # Only the headers: a server that waited for the body would never answer.
        connection.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        answer = connection.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413") and "request body must be at most" in answer


def test_a_chunked_body_is_cut_off_at_the_limit(raw, monkeypatch) -> None:
    import webui.sdapi

    monkeypatch.setattr(webui.sdapi, "MAX_BODY_BYTES", 10_000)  # the server runs in this process
    body = (b'{"prompt": "' + b"a" * 1000 for _ in range(20))  # no length: sent chunked

    response = raw.post("txt2img", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 413 and "10,000 bytes" in response.json()["detail"]


def test_a_model_picked_by_options_is_used_and_recorded(launched, api, raw) -> None:
    from pipelines import embedded

    studio, _ = launched
    models_file = studio.settings.data_dir / "models.json"
    # The same weights under another name, as a folder: a second model the list offers.
    models_file.write_text(json.dumps([{"name": "Embedded copy", "source": str(embedded.FOLDER), "family": "sd",
                                        "sampler": "Euler", "num_inference_steps": 2, "width": 64, "height": 64}]))  # fmt: skip
    try:
        assert "Embedded copy" in api.util_get_model_names()
        body = {"prompt": PROMPT, "seed": 21, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
        before = raw.post("txt2img", json=body).json()

        api.util_set_model("Embedded copy", find_closest=False)
        assert api.util_get_current_model() == "Embedded copy"
        after = raw.post("txt2img", json=body).json()

        record = studio.gallery.get(after["generation_id"])
        assert record.model == str(embedded.FOLDER)
        assert json.loads(after["info"])["sd_model_name"] == "Embedded copy"
        assert studio.gallery.get(before["generation_id"]).model == "embedded"
        assert_reruns_identically(studio, record.id)
    finally:
        api.util_set_model("embedded", find_closest=False)
        models_file.unlink()
