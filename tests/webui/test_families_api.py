"""Every family through the studio's HTTP API, as a client would drive it: pick the model, generate with the
controls that apply to it, and rerun to the same sha256. Tiny random-weight SD 1.5, SDXL and FLUX models."""

import json

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from webui.settings import Settings

from .conftest import free_port, save_lora, serving

FOLDERS = {"sd": "tiny_sd_folder", "sdxl": "tiny_sdxl_folder", "flux": "tiny_flux_folder"}


@pytest.mark.parametrize("family", list(FOLDERS))
def test_pick_generate_with_the_controls_and_rerun_on_each_family(family, request, tmp_path):
    folder = request.getfixturevalue(FOLDERS[family])
    data = tmp_path / "data"
    (data / "loras").mkdir(parents=True)
    (data / "models.json").write_text(
        json.dumps(
            [
                {
                    "name": "Tiny",
                    "source": str(folder),
                    "family": family,
                    "width": 64,
                    "height": 64,
                    "num_inference_steps": 4,
                },
            ]
        )
    )
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(photo)
    flux = family == "flux"

    with serving(Settings(data_dir=data, user="ada", port=free_port())) as (studio, url):
        save_lora(data / "loras" / "house.safetensors", studio.engine.load(str(folder)).base, seed=6)
        client = Client(url, verbose=False)
        note, sampler, steps, guidance, width, height, negative = client.predict("Tiny", api_name="/pick_model")
        assert f"loaded ({family}" in note and (width, height) == (64, 64)
        # Prompt weights are Stable Diffusion's and SDXL's; FLUX takes the words as they are.
        prompt = "a red circle" if flux else "a (red:1.3) circle, [blurry]"
        variation = (40, 0.2)
        _, _, details = client.predict(
            prompt,
            "",
            sampler,
            steps,
            guidance,
            width,
            height,
            7,
            2,
            1,
            *variation,
            ["house"],
            "0.8",
            None,
            0.6,
            "Tiny",
            api_name="/txt2img",
        )
        made = studio.gallery.get(details["id"])
        assert made.model == str(folder) and [image.seed for image in made.outputs] == [7, 8]
        assert made.params["loras"] == [["house", 0.8]] and made.environment["loras"][0]["name"] == "house"
        assert (made.params["variation_seed"], made.params["variation_strength"]) == variation

        _, _, details = client.predict(
            handle_file(str(photo)),
            "a red square",
            "",
            0.6,
            "fit",
            sampler,
            steps,
            guidance,
            3,
            1,
            0,
            0,
            "Tiny",
            ["house"],
            "0.5",
            api_name="/img2img",
        )
        changed = studio.gallery.get(details["id"])
        assert changed.task == "img2img" and changed.params["loras"] == [["house", 0.5]]

        for record in (made, changed):
            assert studio.rerun(record.id, user="ada").identical, f"{family} {record.task} did not rerun identically"

        if flux:  # what FLUX cannot use is one sentence, and nothing is queued
            before = studio.gallery.count()
            with pytest.raises(Exception, match="negative_prompt does not apply to FLUX"):
                client.predict(
                    "a cat",
                    "blurry",
                    sampler,
                    steps,
                    guidance,
                    width,
                    height,
                    1,
                    1,
                    model_name="Tiny",
                    api_name="/txt2img",
                )
            assert studio.gallery.count() == before
