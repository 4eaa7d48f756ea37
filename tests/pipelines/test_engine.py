"""The engine on tiny random-weight pipelines: what a user relies on.

The same seed gives the same picture, a batch is the singles side by side,
every sampler runs, cancel stops, repeated prompts skip the text encoder, and
task pipelines share the loaded weights.
"""

import numpy as np
import pytest

from pipelines.engine import Engine
from pipelines.errors import ModelError
from pipelines.progress import CancelToken
from pipelines.requests import Text2ImgRequest
from pipelines.samplers import SAMPLER_NAMES
from pipelines.sources import resolve_source


@pytest.fixture(scope="module")
def engine():
    return Engine()


def request(model, **changes):
    fields = {"prompt": "a red circle", "model": str(model), "width": 64, "height": 64, "num_inference_steps": 3}
    return Text2ImgRequest(**{**fields, **changes})


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(params=["tiny_sd_folder", "tiny_sdxl_folder"])
def model(request):
    return request.getfixturevalue(request.param)


def test_same_seed_same_pixels_other_seed_other_pixels(engine, model):
    first = engine.run(request(model, seed=5)).images[0]
    again = engine.run(request(model, seed=5)).images[0]
    other = engine.run(request(model, seed=6)).images[0]
    assert first.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_batch_equals_singles(engine, model):
    batch = engine.run(request(model, seed=10, batch_size=3))
    assert batch.seeds == [10, 11, 12]
    for image, seed in zip(batch.images, batch.seeds, strict=True):
        single = engine.run(request(model, seed=seed)).images[0]
        # Batched and single convolutions may round differently in the last
        # float bit; after quantising to 8 bits no pixel may move by more than 1.
        assert np.abs(pixels(image) - pixels(single)).max() <= 1


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_and_is_reproducible(engine, tiny_sd_folder, sampler):
    made = [engine.run(request(tiny_sd_folder, sampler=sampler, seed=3)).images[0] for _ in range(2)]
    assert made[0].size == (64, 64)
    assert np.array_equal(pixels(made[0]), pixels(made[1]))


def test_samplers_differ(engine, tiny_sd_folder):
    euler = engine.run(request(tiny_sd_folder, sampler="Euler", seed=3)).images[0]
    ddim = engine.run(request(tiny_sd_folder, sampler="DDIM", seed=3)).images[0]
    assert not np.array_equal(pixels(euler), pixels(ddim))


def test_progress_reports_every_step(engine, tiny_sd_folder):
    seen = []
    engine.run(request(tiny_sd_folder, num_inference_steps=4), progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_early_and_returns_no_image(engine, tiny_sd_folder):
    token = CancelToken()
    steps = []

    def progress(step, total):
        steps.append(step)
        if step == 2:
            token.cancel()

    result = engine.run(request(tiny_sd_folder, num_inference_steps=10), progress=progress, cancel=token)
    assert result.cancelled
    assert result.images == []
    assert steps == [1, 2]


def test_repeated_prompt_is_a_cache_hit(tiny_sd_folder):
    engine = Engine()
    engine.run(request(tiny_sd_folder, prompt="a blue square", seed=1))
    assert (engine.text_cache.hits, engine.text_cache.misses) == (0, 1)
    cached = engine.run(request(tiny_sd_folder, prompt="a blue square", seed=1)).images[0]
    assert (engine.text_cache.hits, engine.text_cache.misses) == (1, 1)
    engine.run(request(tiny_sd_folder, prompt="a blue square", negative_prompt="red", seed=1))
    assert engine.text_cache.misses == 2
    # The cached embedding gives the same pixels as encoding afresh.
    engine.text_cache.clear()
    fresh = engine.run(request(tiny_sd_folder, prompt="a blue square", seed=1)).images[0]
    assert np.array_equal(pixels(cached), pixels(fresh))


def test_task_pipelines_share_the_loaded_weights(tiny_sd_folder):
    engine = Engine()
    base = engine.pipeline(str(tiny_sd_folder), "txt2img")
    img2img = engine.pipeline(str(tiny_sd_folder), "img2img")
    inpaint = engine.pipeline(str(tiny_sd_folder), "inpaint")
    assert img2img.unet is base.unet and inpaint.unet is base.unet
    assert img2img.vae is base.vae and img2img.text_encoder is base.text_encoder
    assert engine.loads == 1


def test_embedded_model_ships_with_the_package_and_runs_offline():
    engine = Engine()
    result = engine.run(Text2ImgRequest(prompt="a red circle", width=64, height=64, num_inference_steps=2))
    assert result.images[0].size == (64, 64)
    assert len(result.model_revision) == 64
    # The revision is the weights' content hash: a second engine agrees.
    assert Engine().load("embedded").revision == result.model_revision


def test_environment_names_versions_device_and_dtype(engine):
    env = engine.environment()
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["torch"] and env["diffusers"] and env["threads"] == 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("not a model", "model must be 'embedded', a diffusers folder, a .safetensors file or a hub id"),
        ("missing.safetensors", "model file 'missing.safetensors' does not exist."),
    ],
)
def test_unresolvable_models_get_a_clear_message(tmp_path, model, message):
    with pytest.raises(ModelError, match=message.replace(".", "\\.").replace("(", "\\(")):
        resolve_source(model)


def test_model_sources_are_told_apart(tmp_path, tiny_sd_folder):
    assert resolve_source("embedded").kind == "embedded"
    assert resolve_source(str(tiny_sd_folder)).kind == "folder"
    assert resolve_source("stable-diffusion-v1-5/stable-diffusion-v1-5").kind == "hub"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no model_index.json"):
        resolve_source(str(tmp_path / "empty"))
