"""Weighted prompts, LoRAs, variation seeds, reference images and an SDXL refiner through the studio and its API:
recorded, re-run to the same sha256, and refused in one sentence (nothing written) where they cannot run."""

import pytest

from pipelines.requests import Text2ImgRequest
from webui.settings import Settings
from webui.studio import Studio

from .conftest import save_lora


def test_weighted_prompt_lora_and_variation_rerun_identically(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", user="ada", loras_dir=str(tmp_path / "loras"))
    (tmp_path / "loras").mkdir()
    studio = Studio.from_settings(settings)
    try:
        save_lora(tmp_path / "loras" / "brand.safetensors", studio.engine.load("embedded").base, seed=5)
        request = Text2ImgRequest(
            prompt="a (red:1.3) circle on a [blue] background",
            negative_prompt="(black:1.2)",
            seed=12,
            width=64,
            height=64,
            num_inference_steps=20,
            guidance_scale=5.0,
            loras=(("brand", 0.8),),
            variation_seed=99,
            variation_strength=0.2,
        )
        record = studio.submit(request, user="ada")
        assert record.status == "succeeded"
        assert [entry["name"] for entry in record.environment["loras"]] == ["brand"]
        assert record.params["loras"] == [["brand", 0.8]]
        outcome = studio.rerun(record.id, user="ada")
        assert outcome.identical, outcome.differences
        # A different LoRA weight is a different picture, and the rerun says it is not identical.
        changed = studio.rerun(record.id, user="ada", loras=(("brand", 0.0),))
        assert not changed.identical
    finally:
        studio.close()


def test_the_settings_reach_the_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_MAX_MODELS", "3")
    monkeypatch.setenv("ATELIER_ATTENTION", "math")
    monkeypatch.setenv("ATELIER_VAE_TILING", "on")
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    studio = Studio.from_settings(Settings.from_env())
    try:
        engine = studio.engine
        assert engine.max_models == 3 and engine.loras_dir == tmp_path / "data" / "loras"
        environment = engine.environment()
        assert (environment["attention"], environment["vae_tiling"]) == ("math", "on")
    finally:
        studio.close()


def test_a_lora_and_a_weighted_prompt_over_the_api(launched):
    from gradio_client import Client

    studio, url = launched
    folder = studio.settings.loras_folder
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(folder / "poster.safetensors", studio.engine.load("embedded").base, seed=8)
    client = Client(url, verbose=False)
    _, summary, details = client.predict(
        "a (yellow:1.2) circle on a black background",
        "",
        "DPM++ 2M",
        20,
        5.0,
        64,
        64,
        3,
        1,
        1,
        -1,
        0.1,
        ["poster"],
        "0.7",
        None,
        0.6,
        api_name="/txt2img",
    )
    record = studio.gallery.get(details["id"])
    assert record.params["loras"] == [["poster", 0.7]] and record.environment["loras"][0]["name"] == "poster"
    assert record.prompt == "a (yellow:1.2) circle on a black background"
    try:
        client.predict(
            "a circle",
            "",
            "DPM++ 2M",
            20,
            5.0,
            64,
            64,
            3,
            1,
            1,
            -1,
            0.1,
            ["poster"],
            "0.7, 0.2",
            None,
            0.6,
            api_name="/txt2img",
        )
    except Exception as error:
        assert "LoRA weights must be one per picked LoRA" in str(error)
    else:
        raise AssertionError("two weights for one LoRA were accepted")


def test_the_image_tabs_take_loras_a_reference_and_variations_over_the_api(launched, tmp_path):
    """Image to image, product background and ControlNet have the same style controls as text to image."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from pipelines.embedded.world import Scene, render

    studio, url = launched
    folder = studio.settings.loras_folder
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(folder / "label.safetensors", studio.engine.load("embedded").base, seed=11)
    client = Client(url, verbose=False)
    photo_path = tmp_path / "photo.png"
    Image.fromarray(render(Scene("square", "red", "blue", 0.22, 0.5, 0.5))).save(photo_path)
    photo = handle_file(str(photo_path))
    settings = ["DPM++ 2M", 20, 5.0, 7, 1, 0, 0]  # sampler, steps, guidance, seed, batch, width, height
    img2img = [photo, "a red square on a white background", "", 0.8, "fit", *settings]

    def outputs(details):
        record = studio.gallery.get(details["id"])
        return record, [image.sha256 for image in record.outputs]

    plain, plain_hashes = outputs(client.predict(*img2img, api_name="/img2img")[2])
    styled, styled_hashes = outputs(
        client.predict(*img2img, lora_names=["label"], lora_weights="0.9", api_name="/img2img")[2]
    )
    assert plain.params["loras"] == [] and styled.params["loras"] == [["label", 0.9]]
    assert styled.environment["loras"][0]["name"] == "label"
    assert styled_hashes != plain_hashes  # the LoRA steered the picture
    assert studio.rerun(styled.id, user="ada").identical

    editor = {"background": None, "layers": [], "composite": None}
    inpainted, _ = outputs(
        client.predict(
            photo,
            editor,
            "auto",
            "a red square on a green background",
            "",
            0,
            4,
            0,
            1.0,
            *settings,
            lora_names=["label"],
            lora_weights="0.5",
            api_name="/inpaint",
        )[2]
    )
    assert inpainted.params["loras"] == [["label", 0.5]]

    control = [
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
    ]
    varied, _ = outputs(
        client.predict(photo, *control, variation_seed=40, variation_strength=0.2, api_name="/controlnet")[2]
    )
    assert (varied.params["variation_seed"], varied.params["variation_strength"]) == (40, 0.2)
    assert studio.rerun(varied.id, user="ada").identical

    # Without IP-Adapter weights on this machine a reference image is one clear sentence, and nothing is written.
    before = studio.gallery.count()
    try:
        client.predict(*img2img, reference=photo, api_name="/img2img")
    except Exception as error:
        assert "IP-Adapter" in str(error)
    else:
        raise AssertionError("a reference image ran without IP-Adapter weights")
    assert studio.gallery.count() == before


def test_an_image_tab_shows_the_picture_forming(launched, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    studio, url = launched
    path = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
    client = Client(url, verbose=False)
    job = client.submit(
        handle_file(str(path)),
        "a white square on a green background",
        "",
        1.0,
        "fit",
        "Euler",
        60,
        5.0,
        5,
        1,
        0,
        0,
        api_name="/img2img",
    )
    final = job.result()
    forming = [output for output in job.outputs()[:-1] if "Forming" in str(output[1])]
    assert forming, "no preview was shown while the image formed"
    assert studio.gallery.get(final[2]["id"]).status == "succeeded"


def test_what_a_run_would_refuse_is_refused_before_it_is_queued(tmp_path):
    """A queued job that can only fail would leave a failed record; these are one sentence and no record."""
    from PIL import Image

    from pipelines.errors import ModelError
    from pipelines.requests import ImageRef, RequestError

    studio = Studio.from_settings(Settings(data_dir=tmp_path / "data", user="ada", loras_dir=str(tmp_path / "loras")))
    (tmp_path / "loras").mkdir()
    reference = ImageRef.of(Image.new("RGB", (64, 64), "red"))
    refused = [
        (Text2ImgRequest(prompt="a (red:-1) circle on a blue background"), "prompt weights must be 0 or more"),
        (
            Text2ImgRequest(prompt="a red circle", negative_prompt="(blue:-0.5) background"),
            "negative_prompt weights must be 0 or more",
        ),
        (Text2ImgRequest(prompt="a red circle", loras=(("missing", 1.0),)), "missing"),
        (Text2ImgRequest(prompt="a red circle", ip_adapter_image=reference), "IP-Adapter weights"),
        (
            Text2ImgRequest(prompt="a cat", negative_prompt="blurry", model="org/some-flux-model"),
            "negative_prompt does not apply to FLUX",
        ),
    ]
    try:
        for request, words in refused:
            try:
                studio.enqueue(request, user="ada")
            except (ModelError, RequestError) as error:
                assert words in str(error), str(error)
            else:
                raise AssertionError(f"queued: {request.prompt!r}")
        assert studio.gallery.count() == 0
        assert studio._engine is None  # refused without loading a model
        queued = studio.enqueue(Text2ImgRequest(prompt="a (red:1.2) circle"), user="ada")
        assert queued.status == "queued"
    finally:
        studio.close()


def test_an_sdxl_refiner_over_the_api_reruns_identically_and_says_when_it_is_gone(
    tmp_path, tiny_sdxl_folder, tiny_sdxl_refiner_folder
):
    import shutil

    from gradio_client import Client

    from pipelines.errors import ModelError
    from tests.webui.conftest import free_port, serving

    refiner = tmp_path / "refiner"
    shutil.copytree(tiny_sdxl_refiner_folder, refiner)
    settings = Settings(data_dir=tmp_path / "data", user="ada", model=str(tiny_sdxl_folder), port=free_port())
    with serving(settings) as (studio, url):
        client = Client(url, verbose=False)
        _, summary, details = client.predict(
            "a (red:1.2) circle",
            "",
            "Euler",
            6,
            5.0,
            64,
            64,
            3,
            1,
            refiner=str(refiner),
            refiner_switch=0.6,
            api_name="/txt2img",
        )
        record = studio.gallery.get(details["id"])
        assert (record.params["refiner"], record.params["refiner_switch"]) == (str(refiner), 0.6)
        assert record.environment["refiner"]["source"] == str(refiner)
        assert studio.rerun(record.id, user="ada").identical
        # An SD model with a refiner: one sentence before anything is queued.
        before = studio.gallery.count()
        try:
            client.predict(
                "a cat",
                "",
                "Euler",
                6,
                5.0,
                64,
                64,
                3,
                1,
                1,
                -1,
                0.1,
                [],
                "",
                None,
                0.6,
                "embedded",
                str(refiner),
                0.6,
                api_name="/txt2img",
            )
        except Exception as error:
            assert "refiner applies to SDXL models" in str(error)
        else:
            raise AssertionError("a refiner ran on the embedded model")
        assert studio.gallery.count() == before
    # Later, on a fresh start, the refiner's folder is gone: the rerun says so.
    shutil.rmtree(refiner)
    studio = Studio.from_settings(settings)
    try:
        with pytest.raises(ModelError, match=r"^refiner: model .* is not on this machine"):
            studio.rerun(record.id, user="ada")
        assert studio.gallery.count() == before
    finally:
        studio.close()
