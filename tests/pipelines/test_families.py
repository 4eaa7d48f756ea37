"""FLUX beside Stable Diffusion: every task through the same engine, and what does not apply said plainly.

Also variation seeds, which blend a second seed's starting noise in.
"""

import numpy as np
import pytest
from PIL import Image

from pipelines.engine import Engine
from pipelines.errors import ModelError
from pipelines.requests import (
    ControlNetRequest,
    ControlUnit,
    ImageRef,
    Img2ImgRequest,
    InpaintRequest,
    RequestError,
    Text2ImgRequest,
)


@pytest.fixture(scope="module")
def flux(tiny_flux_folder):
    return Engine(), {
        "model": str(tiny_flux_folder),
        "num_inference_steps": 2,
        "guidance_scale": 3.5,
        "sampler": "Euler",
        "seed": 5,
    }


def test_flux_runs_every_task_on_one_load(flux, tiny_flux_controlnet_folder):
    engine, common = flux
    photo = Image.new("RGB", (64, 64), (30, 60, 220))
    photo.paste((230, 25, 25), (20, 20, 44, 44))
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (20, 20, 44, 44))
    requests = [
        Text2ImgRequest(prompt="a red square", width=64, height=64, **common),
        Img2ImgRequest(prompt="a red square", image=ImageRef.of(photo), strength=0.6, **common),
        InpaintRequest(prompt="a red square", image=ImageRef.of(photo), mask_image=ImageRef.of(mask), **common),
        ControlNetRequest(
            prompt="a red square",
            controls=(ControlUnit(image=ImageRef.of(photo), controlnet=str(tiny_flux_controlnet_folder)),),
            **common,
        ),
    ]
    images = [engine.run(request).images[0] for request in requests]
    assert all(image.size == (64, 64) for image in images)
    # Inpainting keeps the product's pixels on FLUX too.
    assert np.array_equal(np.asarray(images[2])[20:44, 20:44], np.asarray(photo)[20:44, 20:44])
    loaded = engine.load(common["model"])
    assert loaded.family == "flux" and engine.loads == 1
    assert all(pipe.transformer is loaded.base.transformer for pipe in loaded.pipelines.values())


def test_flux_same_seed_same_pixels_and_the_prompt_cache(flux):
    engine, common = flux
    first = engine.run(Text2ImgRequest(prompt="a blue circle", width=64, height=64, **common)).images[0]
    hits = engine.text_cache.hits
    again = engine.run(Text2ImgRequest(prompt="a blue circle", width=64, height=64, **common)).images[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert engine.text_cache.hits == hits + 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"negative_prompt": "blurry"}, "negative_prompt does not apply to FLUX"),
        ({"sampler": "DPM++ 2M"}, "sampler must be Euler for a flow-matching model"),
    ],
)
def test_what_does_not_apply_to_flux_is_said_plainly(flux, changes, message):
    engine, common = flux
    with pytest.raises(ModelError, match=message):
        engine.run(Text2ImgRequest(prompt="a red square", width=64, height=64, **{**common, **changes}))


def test_flux_variations_blend_its_packed_noise(flux):
    """Strength 0 is the seed's own image, 1 the variation seed's, pixel for pixel; between, a near copy."""
    engine, common = flux
    common = {**common, "prompt": "a red square", "width": 64, "height": 64, "batch_size": 2}

    def images(**fields):
        return [np.asarray(image, dtype=int) for image in engine.run(Text2ImgRequest(**{**common, **fields})).images]

    own, others = images(seed=5), images(seed=50)
    assert all(np.array_equal(a, b) for a, b in zip(images(seed=5, variation_seed=50, variation_strength=0.0), own))
    assert all(np.array_equal(a, b) for a, b in zip(images(seed=5, variation_seed=50, variation_strength=1.0), others))
    near = images(seed=5, variation_seed=50, variation_strength=0.1)[0]
    assert not np.array_equal(near, own[0])
    assert np.abs(near - own[0]).mean() < 0.5 * np.abs(others[0] - own[0]).mean()


def test_a_stable_diffusion_controlnet_is_refused_on_flux(flux, tiny_sd_controlnet_folder):
    engine, common = flux
    request = ControlNetRequest(
        prompt="a red square",
        controls=(
            ControlUnit(image=ImageRef.of(Image.new("RGB", (64, 64))), controlnet=str(tiny_sd_controlnet_folder)),
        ),
        **common,
    )
    with pytest.raises(ModelError, match="made for another kind of model"):
        engine.run(request)


# -- variation seeds -------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    return Engine()


SETTINGS = {
    "prompt": "a red circle on a blue background",
    "width": 64,
    "height": 64,
    "num_inference_steps": 20,
    "guidance_scale": 5.0,
}


def pixels(engine, **fields):
    return np.asarray(engine.run(Text2ImgRequest(**{**SETTINGS, **fields})).images[0], dtype=int)


def test_variation_strength_moves_from_the_seed_to_the_variation_seed(embedded):
    seed_image, other_image = pixels(embedded, seed=1), pixels(embedded, seed=2)
    assert np.array_equal(pixels(embedded, seed=1, variation_seed=2, variation_strength=1.0), other_image)
    near = pixels(embedded, seed=1, variation_seed=2, variation_strength=0.1)
    # A near copy: far closer to the liked image than another seed is.
    assert np.abs(near - seed_image).mean() < 0.3 * np.abs(other_image - seed_image).mean()
    assert not np.array_equal(near, seed_image)


def test_variations_of_a_batch_blend_image_by_image(embedded):
    """Image i of a batch blends towards variation_seed + i: at strength 1 the batch is the variation seed's batch.

    Pixel for pixel against that batch (the same noise through the same batched call); against the single
    image of seed 21 only within a level or two, since a batch of two and a batch of one are two different
    computations whose float rounding may differ between CPUs.
    """

    def batch(**fields):
        images = embedded.run(Text2ImgRequest(**SETTINGS, batch_size=2, **fields)).images
        return [np.asarray(image, dtype=int) for image in images]

    blended, theirs = batch(seed=10, variation_seed=20, variation_strength=1.0), batch(seed=20)
    assert all(np.array_equal(a, b) for a, b in zip(blended, theirs, strict=True))
    alone = pixels(embedded, seed=21)
    assert np.abs(blended[1] - alone).max() <= 3
    assert not np.array_equal(blended[0], blended[1])


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"variation_strength": 0.5}, "variation_strength needs a variation_seed"),
        ({"variation_seed": 1, "variation_strength": 1.5}, "variation_strength must be a number from 0 to 1"),
        ({"variation_seed": -1, "variation_strength": 0.5}, "variation_seed must be a whole number"),
    ],
)
def test_bad_variation_fields_are_one_sentence(fields, message):
    with pytest.raises(RequestError, match=message):
        Text2ImgRequest(prompt="a red circle", **fields)


def test_variations_do_not_apply_to_image_to_image():
    with pytest.raises(RequestError, match="variation_seed applies to text-to-image and ControlNet"):
        Img2ImgRequest(
            prompt="a red circle",
            image=ImageRef.of(Image.new("RGB", (64, 64))),
            variation_seed=1,
            variation_strength=0.5,
        )
