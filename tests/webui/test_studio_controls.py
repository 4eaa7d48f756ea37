"""Weighted prompts, a LoRA and a variation seed through the studio: recorded, and re-run to the same sha256."""

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

from pipelines.requests import Text2ImgRequest
from webui.settings import Settings
from webui.studio import Studio


def save_lora(path, pipe, seed):
    """A UNet LoRA for ``pipe``, as a trainer saves one: PEFT layers with random non-zero weights."""
    unet = copy.deepcopy(pipe.unet)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, unet_lora_layers=get_peft_model_state_dict(unet))


def test_weighted_prompt_lora_and_variation_rerun_identically(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", user="ada", loras_dir=str(tmp_path / "loras"))
    (tmp_path / "loras").mkdir()
    studio = Studio.from_settings(settings)
    try:
        save_lora(tmp_path / "loras" / "brand.safetensors", studio.engine.load("embedded").base, seed=5)
        request = Text2ImgRequest(
            prompt="a (red:1.3) circle on a [blue] background", negative_prompt="(black:1.2)", seed=12,
            width=64, height=64, num_inference_steps=20, guidance_scale=5.0,
            loras=(("brand", 0.8),), variation_seed=99, variation_strength=0.2,
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
        "a (yellow:1.2) circle on a black background", "", "DPM++ 2M", 20, 5.0, 64, 64, 3, 1, 1, -1, 0.1,
        ["poster"], "0.7", None, 0.6, api_name="/txt2img",
    )
    record = studio.gallery.get(details["id"])
    assert record.params["loras"] == [["poster", 0.7]] and record.environment["loras"][0]["name"] == "poster"
    assert record.prompt == "a (yellow:1.2) circle on a black background"
    try:
        client.predict("a circle", "", "DPM++ 2M", 20, 5.0, 64, 64, 3, 1, 1, -1, 0.1, ["poster"], "0.7, 0.2",
                       None, 0.6, api_name="/txt2img")
    except Exception as error:
        assert "LoRA weights must be one per picked LoRA" in str(error)
    else:
        raise AssertionError("two weights for one LoRA were accepted")
