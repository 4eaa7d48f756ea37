"""SDXL with a refiner: the base denoises until the switch, the refiner finishes, on tiny random-weight models."""

import numpy as np
import pytest
from PIL import Image

from pipelines.engine import Engine
from pipelines.errors import ModelError
from pipelines.loaders import _single_file_class
from pipelines.requests import ImageRef, Img2ImgRequest, InpaintRequest, RequestError, Text2ImgRequest

SETTINGS = {"width": 64, "height": 64, "num_inference_steps": 10, "guidance_scale": 5.0, "sampler": "Euler", "seed": 4}


@pytest.fixture(scope="module")
def engine():
    return Engine(max_models=2)


def run(engine, request, **options):
    result = engine.run(request, **options)
    return result, [np.asarray(image) for image in result.images]


def test_the_refiner_finishes_the_base_and_reruns_identically(engine, tiny_sdxl_folder, tiny_sdxl_refiner_folder):
    base = Text2ImgRequest(prompt="a red circle", model=str(tiny_sdxl_folder), batch_size=2, **SETTINGS)
    refined = base.replace(refiner=str(tiny_sdxl_refiner_folder), refiner_switch=0.7)
    steps = []
    first, first_pixels = run(engine, refined, progress=lambda done, total: steps.append((done, total)))
    _, again = run(engine, refined)
    _, plain = run(engine, base)

    assert all(np.array_equal(a, b) for a, b in zip(first_pixels, again))  # same seed, same pixels
    assert not np.array_equal(first_pixels[0], plain[0])  # the refiner changed the picture
    assert not np.array_equal(first_pixels[0], first_pixels[1])  # each image of the batch its own seed
    assert first.environment["refiner"]["source"] == str(tiny_sdxl_refiner_folder)
    assert len(first.environment["refiner"]["revision"]) == 64
    # One bar over both models: it only moves forward and ends at the schedule's 10 steps.
    assert steps[-1] == (10, 10) and [done for done, _ in steps] == sorted(done for done, _ in steps)
    assert {total for _, total in steps} == {10}
    # Each model loaded once; the base is resident beside its refiner.
    assert engine.loads == 2
    assert set(engine.resident()) == {str(tiny_sdxl_folder), str(tiny_sdxl_refiner_folder)}


def test_the_switch_decides_how_much_the_refiner_does(engine, tiny_sdxl_folder, tiny_sdxl_refiner_folder):
    request = Text2ImgRequest(
        prompt="a blue square", model=str(tiny_sdxl_folder), refiner=str(tiny_sdxl_refiner_folder), **SETTINGS
    )
    early = run(engine, request.replace(refiner_switch=0.3))[1][0]
    late = run(engine, request.replace(refiner_switch=0.9))[1][0]
    assert not np.array_equal(early, late)


def test_image_to_image_with_a_refiner(engine, tiny_sdxl_folder, tiny_sdxl_refiner_folder):
    start = ImageRef.of(Image.new("RGB", (64, 64), (200, 30, 30)))
    request = Img2ImgRequest(
        prompt="a red square",
        model=str(tiny_sdxl_folder),
        image=start,
        strength=0.6,
        refiner=str(tiny_sdxl_refiner_folder),
        **SETTINGS,
    )
    steps = []
    result, pixels = run(engine, request, progress=lambda done, total: steps.append((done, total)))
    assert len(pixels) == 1 and pixels[0].shape == (64, 64, 3)
    assert steps[-1][0] == steps[-1][1] == 6  # strength 0.6 of 10 steps, split between the two
    assert "refiner" in result.environment


def test_a_refiner_is_refused_where_it_does_not_apply(
    engine, tiny_sd_folder, tiny_sdxl_folder, tiny_sdxl_refiner_folder, tmp_path
):
    refiner = str(tiny_sdxl_refiner_folder)
    with pytest.raises(ModelError, match="refiner applies to SDXL models; .* is a Stable Diffusion 1.x/2.x model"):
        engine.check(Text2ImgRequest(prompt="a cat", model=str(tiny_sd_folder), refiner=refiner, **SETTINGS))
    with pytest.raises(ModelError, match="is an SDXL refiner .*pick it as the refiner of an SDXL model"):
        engine.run(Text2ImgRequest(prompt="a cat", model=refiner, **SETTINGS))
    gone = str(tmp_path / "deleted-refiner")
    with pytest.raises(ModelError, match=r"^refiner: model .* is not on this machine"):
        engine.check(Text2ImgRequest(prompt="a cat", model=str(tiny_sdxl_folder), refiner=gone, **SETTINGS))
    with pytest.raises(ModelError, match="room for two models"):
        Engine(max_models=1).check(
            Text2ImgRequest(prompt="a cat", model=str(tiny_sdxl_folder), refiner=refiner, **SETTINGS)
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"refiner_switch": 1.0}, "refiner_switch must be a number between 0 and 1"),
        ({"refiner_switch": 0}, "refiner_switch must be a number between 0 and 1"),
        ({"refiner_switch": "0.8"}, "refiner_switch must be a number between 0 and 1"),
        ({"refiner": "  "}, "refiner must name an SDXL refiner model"),
    ],
)
def test_bad_refiner_fields_are_one_sentence(fields, message):
    with pytest.raises(RequestError, match=message):
        Text2ImgRequest(prompt="a cat", **fields)


def test_inpainting_keeps_its_pixels_and_takes_no_refiner():
    photo = ImageRef.of(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(
        RequestError, match="refiner applies to text-to-image and image-to-image; remove it for inpaint"
    ):
        InpaintRequest(
            prompt="a cat", image=photo, mask_image=ImageRef.of(Image.new("L", (64, 64), 255)), refiner="x/y"
        )


def test_a_single_file_refiner_is_read_as_one(tmp_path):
    """The refiner's checkpoint has one text encoder, under conditioner.embedders.0 (SDXL's base has .1 as well)."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    def weight():
        return torch.zeros(1)

    refiner = tmp_path / "refiner.safetensors"
    save_file(
        {
            "conditioner.embedders.0.model.ln_final.weight": weight(),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        },
        str(refiner),
    )
    base = tmp_path / "base.safetensors"
    save_file(
        {
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": weight(),
            "conditioner.embedders.1.model.ln_final.weight": weight(),
        },
        str(base),
    )
    assert _single_file_class(refiner) is StableDiffusionXLImg2ImgPipeline
    assert _single_file_class(base) is StableDiffusionXLPipeline


def test_a_weighted_prompt_reaches_the_refiner_too(engine, tiny_sdxl_folder, tiny_sdxl_refiner_folder):
    """The refiner encodes the prompt with its one encoder, weights included, through the same cache."""
    request = Text2ImgRequest(
        prompt="a (red:1.5) circle",
        negative_prompt="[blurry]",
        model=str(tiny_sdxl_folder),
        refiner=str(tiny_sdxl_refiner_folder),
        **SETTINGS,
    )
    weighted = run(engine, request)[1][0]
    plain = run(engine, request.replace(prompt="a red circle", negative_prompt="blurry"))[1][0]
    assert not np.array_equal(weighted, plain)
    assert np.array_equal(run(engine, request)[1][0], weighted)


def test_a_model_used_as_a_refiner_runs_as_itself_whatever_ran_on_it_before(tiny_sdxl_folder, tmp_path):
    """An SDXL model first run as a base with a LoRA keeps the adapter loaded; as a refiner it must not apply it."""
    import shutil

    from tests.webui.conftest import save_lora

    other = tmp_path / "another-xl"
    shutil.copytree(tiny_sdxl_folder, other)
    loras = tmp_path / "loras"
    loras.mkdir()
    request = Text2ImgRequest(prompt="a red circle", model=str(tiny_sdxl_folder), refiner=str(other), **SETTINGS)
    clean = np.asarray(Engine(max_models=2).run(request).images[0])

    engine = Engine(max_models=2, loras_dir=loras)
    save_lora(loras / "strong.safetensors", engine.load(str(other)).base, seed=1)
    engine.run(Text2ImgRequest(prompt="a red circle", model=str(other), loras=(("strong", 1.0),), **SETTINGS))
    assert np.array_equal(np.asarray(engine.run(request).images[0]), clean)
