"""Image-to-image, product backgrounds and ControlNet through the studio, the CLI and the API.

Each task's record holds its inputs with their roles, so a rerun needs
nothing but the record and reproduces the same sha256; bad uploads are
refused with one sentence and leave nothing behind.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines import masks
from pipelines.embedded.world import COLOURS, Scene, classify, render
from pipelines.limits import DEFAULT_MATTE_BAND
from pipelines.requests import ControlNetRequest, ControlUnit, ImageRef, Img2ImgRequest, InpaintRequest, Text2ImgRequest
from webui.forms import build_request

SETTINGS = {"num_inference_steps": 20, "guidance_scale": 5.0}


def drawn(shape="square", colour="red", background="blue", half=0.22, cx=0.5, cy=0.5) -> Image.Image:
    return Image.fromarray(render(Scene(shape, colour, background, half, cx, cy)))


def kept_pixels(photo: Image.Image, background: str) -> np.ndarray:
    return np.any(np.asarray(photo) != np.array(COLOURS[background], dtype=np.uint8), axis=2)


def interior(kept: np.ndarray) -> np.ndarray:
    """What comes back bit for bit once the edge band is matted (issue 20): the kept pixels beyond the band."""
    return (
        np.asarray(masks.adjust(Image.fromarray(np.where(kept, 255, 0).astype(np.uint8)), -DEFAULT_MATTE_BAND)) == 255
    )


def stored(studio, record, role):
    return [Image.open(studio.gallery.path(i.path)) for i in record.images if i.role == role]


def files_in(studio) -> set[str]:
    root = studio.settings.data_dir
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".webp")}


# -- the studio ----------------------------------------------------------------------


def test_each_task_keeps_its_inputs_and_reruns_identically(studio):
    photo = drawn()
    mask = Image.fromarray(np.where(kept_pixels(photo, "blue"), 0, 255).astype(np.uint8))
    requests = [
        Img2ImgRequest(prompt="a red square on a white background", image=ImageRef.of(photo), seed=1, **SETTINGS),
        InpaintRequest(
            prompt="a red square on a green background",
            image=ImageRef.of(photo),
            mask_image=ImageRef.of(mask),
            seed=2,
            **SETTINGS,
        ),
        ControlNetRequest(
            prompt="a yellow circle on a black background",
            controls=(ControlUnit(image=ImageRef.of(photo)),),
            seed=3,
            **SETTINGS,
        ),
    ]
    roles = {"img2img": ["input"], "inpaint": ["input", "mask"], "controlnet": ["control_source", "control"]}
    for request in requests:
        record = studio.submit(request, user="ada")
        assert record.status == "succeeded"
        assert sorted(i.role for i in record.images if i.role != "output") == sorted(roles[request.task])
        # The stored input is the upload, pixel for pixel.
        first_input = stored(studio, record, roles[request.task][0])[0]
        assert np.array_equal(np.asarray(first_input), np.asarray(photo))
        outcome = studio.rerun(record.id, user="ada")
        assert outcome.identical, outcome.differences
        assert outcome.record.parent_id == record.id


def test_a_rerun_with_one_thing_changed(studio):
    photo = drawn("circle", "white", "black")
    mask = Image.fromarray(np.where(kept_pixels(photo, "black"), 0, 255).astype(np.uint8))
    record = studio.submit(
        InpaintRequest(
            prompt="a white circle on a red background",
            image=ImageRef.of(photo),
            mask_image=ImageRef.of(mask),
            seed=4,
            **SETTINGS,
        ),
        user="ada",
    )
    outcome = studio.rerun(record.id, user="ada", prompt="a white circle on a yellow background")
    [image] = stored(studio, outcome.record, "output")
    assert classify(image).background == "yellow"
    kept = interior(kept_pixels(photo, "black"))
    assert np.array_equal(np.asarray(image.convert("RGB"))[kept], np.asarray(photo)[kept])


def test_a_campaign_is_one_record_with_one_image_per_prompt(studio):
    photo = drawn("triangle", "yellow", "purple")
    request = build_request(
        "inpaint",
        prompt="a yellow triangle on a blue background\na yellow triangle on a green background\na yellow triangle on a black background",
        model="embedded",
        image=photo,
        seed=8,
        **SETTINGS,
    )
    assert request.mask_source == "grabcut"  # no mask given: the product is found
    record = studio.submit(request, user="ada")
    assert [classify(i).background for i in stored(studio, record, "output")] == ["blue", "green", "black"]
    assert [i.seed for i in record.outputs] == [8, 8, 8]


def test_the_automatic_mask_keeps_the_product(studio):
    photo = drawn("circle", "orange", "white", half=0.3)
    record = studio.submit(
        build_request(
            "inpaint", prompt="an orange circle on a blue background", model="embedded", image=photo, seed=5, **SETTINGS
        ),
        user="ada",
    )
    [image] = stored(studio, record, "output")
    [mask] = stored(studio, record, "mask")
    product = np.asarray(mask) == 0
    assert product.sum() > 0.2 * product.size
    product = interior(product)
    assert np.array_equal(np.asarray(image.convert("RGB"))[product], np.asarray(photo)[product])
    assert classify(image).background == "blue"


# -- the command line ----------------------------------------------------------------


def atelier(*args, data):
    command = [str(Path(sys.executable).with_name("atelier")), *args, "--data", str(data)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_cli_every_task_then_rerun_identical(tmp_path):
    photo, control = tmp_path / "photo.png", tmp_path / "edges.png"
    drawn("square", "red", "blue").save(photo)
    drawn("circle", "white", "black", cx=0.3, cy=0.7).save(control)
    data = tmp_path / "data"
    runs = {
        "img2img": ["--image", str(photo), "--strength", "0.8", "--prompt", "a red square on a yellow background"],
        "inpaint": ["--image", str(photo), "--prompt", "a red square on a green background"],
        "controlnet": ["--control-image", str(control), "--prompt", "a red circle on a blue background"],
    }
    for task, args in runs.items():
        made = atelier("generate", "--task", task, *args, "--seed", "3", "--json", data=data)
        assert made.returncode == 0, made.stderr
        generated = json.loads(made.stdout)
        again = atelier("rerun", str(generated["id"]), "--json", data=data)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["identical"] is True, task
    # Inpainting without --mask kept the product: the red square's pixels are the photo's.
    from storage import Gallery

    with Gallery(url=f"sqlite:///{data / 'gallery.db'}", data_dir=data) as gallery:
        inpainted = [r for r in gallery.list() if r.task == "inpaint" and r.parent_id is None][0]
        output = np.asarray(Image.open(gallery.path(inpainted.outputs[0].path)).convert("RGB"))
    kept = interior(kept_pixels(drawn("square", "red", "blue"), "blue"))
    assert np.array_equal(output[kept], np.asarray(drawn("square", "red", "blue"))[kept])


@pytest.mark.parametrize(
    "upload, message",
    [
        (b"this is not a picture", "image must be a PNG, JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "image must be a PNG, JPEG"),
    ],
)
def test_cli_bad_upload_is_one_sentence_and_writes_nothing(tmp_path, upload, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(upload)
    data = tmp_path / "data"
    result = atelier("generate", "--task", "img2img", "--image", str(bad), "--prompt", "a red square", data=data)
    assert result.returncode == 2
    assert result.stderr.startswith(f"atelier: {message}") and result.stderr.count("\n") == 1
    assert not (data / "images").exists() or not any((data / "images").rglob("*.png"))


def test_cli_image_task_without_its_image_says_which(tmp_path):
    result = atelier("generate", "--task", "inpaint", "--prompt", "a red square", data=tmp_path / "data")
    assert result.returncode == 2
    assert result.stderr == "atelier: image is required for this task; upload an image.\n"


# -- the HTTP API --------------------------------------------------------------------


def png(image: Image.Image, path: Path) -> str:
    image.save(path)
    return handle_file(str(path))


def test_img2img_inpaint_and_controlnet_over_the_api(launched, tmp_path):
    studio, url = launched
    client = Client(url, verbose=False)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/img2img", "/inpaint", "/controlnet", "/product_mask", "/control_preview"} <= names
    settings = ["DPM++ 2M", 20, 5.0, 7, 1, 0, 0]  # sampler, steps, guidance, seed, batch, width, height

    photo = png(drawn("square", "red", "blue"), tmp_path / "photo.png")
    _, summary, details = client.predict(
        photo, "a red square on a white background", "", 0.8, "fit", *settings, api_name="/img2img"
    )
    record = studio.gallery.get(details["id"])
    assert record.task == "img2img" and classify(stored(studio, record, "output")[0]).background == "white"

    empty_editor = {"background": None, "layers": [], "composite": None}
    _, summary, details = client.predict(
        photo,
        empty_editor,
        "auto",
        "a red square on a green background\na red square on a yellow background",
        "",
        0,
        4,
        0,
        1.0,
        *settings,
        api_name="/inpaint",
    )
    record = studio.gallery.get(details["id"])
    assert [classify(i).background for i in stored(studio, record, "output")] == ["green", "yellow"]
    assert record.params["mask_source"] == "grabcut"
    assert record.params["matting"] is True and record.params["shadow"] == "none"  # a call from before issue 20
    # Issue 20's controls come after the model and the style controls, by name.
    _, summary, details = client.predict(
        photo,
        empty_editor,
        "auto",
        "a red square on a green background",
        "",
        0,
        4,
        0,
        1.0,
        *settings,
        matte_band=3,
        shadow="contact",
        shadow_opacity=0.7,
        api_name="/inpaint",
    )
    params = studio.gallery.get(details["id"]).params
    assert (params["matte_band"], params["shadow"], params["shadow_opacity"]) == (3, "contact", 0.7)

    control = png(drawn("circle", "white", "black", cx=0.3, cy=0.7), tmp_path / "control.png")
    preview = client.predict(control, "canny", 100, 200, api_name="/control_preview")
    assert Image.open(preview).size == (64, 64)
    _, summary, details = client.predict(
        control,
        "canny",
        100,
        200,
        "embedded-canny",
        1.0,
        0.0,
        1.0,
        None,
        "canny",
        "embedded-canny",
        1.0,
        None,
        None,
        0.75,
        "fit",
        "a red circle on a blue background",
        "",
        *settings,
        api_name="/controlnet",
    )
    record = studio.gallery.get(details["id"])
    reading = classify(stored(studio, record, "output")[0])
    assert reading.colour == "red" and reading.centre[0] < 0.5 and reading.centre[1] > 0.5


@pytest.mark.parametrize(
    "name, data",
    [
        ("text.png", b"not an image at all"),
        ("truncated.png", None),  # made below: a real PNG cut in half
        ("wide.png", None),  # 100,000 x 1 pixels
    ],
)
def test_bad_uploads_over_the_api_write_nothing_and_the_server_stays_up(launched, tmp_path, name, data):
    studio, url = launched
    client = Client(url, verbose=False)
    path = tmp_path / name
    if name == "truncated.png":
        buffer = io.BytesIO()
        drawn().save(buffer, format="PNG")
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if name == "wide.png":
        Image.new("RGB", (100_000, 1), "red").save(path)
    else:
        path.write_bytes(data)
    before_rows, before_files = studio.gallery.count(), files_in(studio)
    with pytest.raises(Exception) as caught:
        client.predict(
            handle_file(str(path)), "a red square", "", 0.8, "fit", "DPM++ 2M", 4, 5.0, 1, 1, 0, 0, api_name="/img2img"
        )
    assert "image" in str(caught.value)
    assert studio.gallery.count() == before_rows
    assert files_in(studio) == before_files
    # Still serving.
    _, _, details = client.predict(
        png(drawn(), tmp_path / "ok.png"),
        "a red square on a blue background",
        "",
        0.5,
        "fit",
        "DPM++ 2M",
        4,
        5.0,
        1,
        1,
        0,
        0,
        api_name="/img2img",
    )
    assert studio.gallery.get(details["id"]).status == "succeeded"


def test_batch_count_and_a_variation_seed_over_the_api(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    before = {r.id for r in studio.gallery.list(limit=200)}
    images, summary, details = client.predict(
        "a red circle on a blue background", "", "DPM++ 2M", 20, 5.0, 64, 64, 30, 2, 2, 40, 0.1, api_name="/txt2img"
    )
    made = sorted((r for r in studio.gallery.list(limit=200) if r.id not in before), key=lambda r: r.id)
    assert [[i.seed for i in r.outputs] for r in made] == [[30, 31], [32, 33]]
    assert all(r.params["variation_seed"] == 40 and r.params["variation_strength"] == 0.1 for r in made)
    assert len(images) == 4 and "2 batches" in summary
    # A variation is a near copy of its seed's image, not another picture.
    plain = studio.submit(
        Text2ImgRequest(prompt="a red circle on a blue background", seed=30, width=64, height=64, **SETTINGS),
        user="ada",
    )
    near = np.asarray(Image.open(studio.gallery.path(made[0].outputs[0].path)), dtype=int)
    assert (
        classify(Image.open(studio.gallery.path(plain.outputs[0].path))).background
        == classify(near.astype(np.uint8)).background
    )


def test_text_to_image_shows_the_picture_forming(launched):
    """The tab streams previews while the job runs (the API sees them as intermediate outputs), then the result."""
    studio, url = launched
    client = Client(url, verbose=False)
    job = client.submit("a white square on a green background", "", "Euler", 60, 5.0, 64, 64, 5, 1, api_name="/txt2img")
    final = job.result()
    forming = [output for output in job.outputs()[:-1] if "Forming" in str(output[1])]
    assert forming, "no preview was shown while the image formed"
    assert all(len(output[0]) == 1 for output in forming)  # the preview, in the images area
    record = studio.gallery.get(final[2]["id"])
    assert record.status == "succeeded" and classify(stored(studio, record, "output")[0]).background == "green"
