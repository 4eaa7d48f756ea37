"""The model list: the embedded model, the one the studio started with, and models.json."""

import json

import pytest

from webui.models import ModelListError, find, load_models


def test_without_a_list_the_embedded_model_and_the_started_one(tmp_path):
    models = load_models(tmp_path, started_with="org/some-model")
    assert [(m.name, m.source) for m in models] == [("embedded", "embedded"), ("org/some-model", "org/some-model")]
    assert models[0].defaults()["width"] == 64  # from the embedded model's card


def test_entries_take_their_family_defaults_and_their_own_settings(tmp_path):
    (tmp_path / "models.json").write_text(
        json.dumps(
            [
                {"name": "SD 1.5", "source": "stable-diffusion-v1-5/stable-diffusion-v1-5", "num_inference_steps": 30},
                {"name": "Juggernaut XL", "source": "/models/juggernautXL.safetensors"},
                {"name": "FLUX dev", "source": "org/FLUX.1-dev"},
            ]
        )
    )
    models = load_models(tmp_path)
    sd, xl, flux = models[1:]
    assert (sd.family, sd.num_inference_steps, sd.width) == ("sd", 30, 512)
    assert (xl.family, xl.width) == ("sdxl", 1024)
    assert (flux.family, flux.sampler, flux.negative_prompt_applies) == ("flux", "Euler", False)
    assert find(models, "Juggernaut XL") is xl and find(models, "/models/juggernautXL.safetensors") is xl


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not a JSON list of models"),
        ('{"name": "x"}', "must hold a JSON list of models"),
        ('[{"name": "x"}]', "entry 1: source must be text"),
        ('[{"name": "x", "source": "a/b", "family": "sd3"}]', "family must be one of sd, sdxl, flux"),
        ('[{"name": "x", "source": "a/b", "sampler": "DPM adaptive"}]', "sampler must be one of"),
        ('[{"name": "x", "source": "a/b", "width": 100000}]', "width must be a whole number from 64 to 2048"),
        ('[{"name": "x", "source": "a/b", "colour": "red"}]', "unknown fields colour"),
        ('[{"name": "embedded", "source": "a/b"}]', "the name 'embedded' is used twice"),
    ],
)
def test_a_bad_list_names_the_entry_and_the_field(tmp_path, content, message):
    (tmp_path / "models.json").write_text(content)
    with pytest.raises(ModelListError, match=message):
        load_models(tmp_path)


def test_pick_a_model_in_the_page_then_generate_with_it_and_rerun_after_it_is_gone(tmp_path, tiny_sd_folder):
    import shutil

    from gradio_client import Client

    from webui.settings import Settings
    from webui.studio import Studio

    from .conftest import free_port, serving

    copy = tmp_path / "tiny-sd"
    shutil.copytree(tiny_sd_folder, copy)
    data = tmp_path / "data"
    data.mkdir()
    (data / "models.json").write_text(
        json.dumps(
            [
                {
                    "name": "Tiny SD",
                    "source": str(copy),
                    "family": "sd",
                    "width": 64,
                    "height": 64,
                    "num_inference_steps": 2,
                }
            ]
        )
    )
    settings = Settings(data_dir=data, user="ada", port=free_port())
    with serving(settings) as (studio, url):
        client = Client(url, verbose=False)
        note, sampler, steps, guidance, width, height, negative = client.predict("Tiny SD", api_name="/pick_model")
        assert "**Tiny SD** loaded (sd" in note and (steps, width, height) == (2, 64, 64)
        _, _, details = client.predict(
            "a red square",
            "",
            sampler,
            steps,
            guidance,
            width,
            height,
            7,
            1,
            1,
            -1,
            0.1,
            [],
            "",
            None,
            0.6,
            "Tiny SD",
            api_name="/txt2img",
        )
        record = studio.gallery.get(details["id"])
        assert record.model == str(copy) and record.model_revision == studio.engine.load(str(copy)).revision
    # The weights are deleted; a fresh studio's rerun says so and writes nothing.
    shutil.rmtree(copy)
    again = Studio.from_settings(settings)
    try:
        before = again.gallery.count()
        from pipelines.errors import ModelError

        with pytest.raises(ModelError, match="not on this machine"):
            again.rerun(record.id, user="ada")
        assert again.gallery.count() == before
    finally:
        again.close()


def test_the_page_hides_what_the_picked_model_cannot_use(tmp_path, page, tiny_sdxl_folder, tiny_flux_folder):
    """The refiner shows only for SDXL; FLUX's built-in guidance takes no negative prompt in any tab."""
    import re

    from playwright.sync_api import expect

    from webui.settings import Settings

    from .conftest import free_port, serving

    data = tmp_path / "data"
    data.mkdir()
    (data / "models.json").write_text(
        json.dumps(
            [
                {"name": "Tiny XL", "source": str(tiny_sdxl_folder), "family": "sdxl", "width": 64, "height": 64},
                {"name": "Tiny FLUX", "source": str(tiny_flux_folder), "family": "flux", "width": 64, "height": 64},
            ]
        )
    )
    with serving(Settings(data_dir=data, user="ada", port=free_port())) as (_, url):
        page.goto(url)
        refiner = page.get_by_text("SDXL refiner", exact=True)
        expect(refiner.first).to_be_hidden()  # the embedded model is no SDXL model

        def pick(name):
            page.get_by_label("Model", exact=True).click()
            page.get_by_role("option", name=name).click()
            expect(page.get_by_text(re.compile(rf"{name}\*\* loaded|{name} loaded"))).to_be_visible(timeout=60_000)

        pick("Tiny XL")
        expect(refiner.first).to_be_visible()
        page.get_by_role("tab", name="Image to image").click()
        panel = page.get_by_role("tabpanel")
        expect(panel.get_by_text("SDXL refiner", exact=True)).to_be_visible()
        expect(panel.get_by_label("Negative prompt")).to_be_visible()

        pick("Tiny FLUX")
        expect(panel.get_by_label("Negative prompt")).to_be_hidden()
        expect(panel.get_by_text("SDXL refiner", exact=True)).to_be_hidden()
        page.get_by_role("tab", name="ControlNet").click()
        expect(page.get_by_role("tabpanel").get_by_label("Negative prompt")).to_be_hidden()
