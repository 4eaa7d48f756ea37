"""Image-to-image, product-background inpainting and ControlNet on the engine.

The embedded model's world makes the checks a person would make by eye:
the background is the asked colour, the product's pixels are the photo's,
the shape sits where the control edges put it. Tiny random SD1.5 and SDXL
pipelines check that the same code runs each family.
"""

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines import masks
from pipelines.embedded.world import Scene, classify, render
from pipelines.engine import Engine
from pipelines.errors import ModelError
from pipelines.requests import (
    ControlNetRequest,
    ControlUnit,
    ImageRef,
    Img2ImgRequest,
    InpaintRequest,
    Text2ImgRequest,
)

SETTINGS = {"num_inference_steps": 20, "guidance_scale": 5.0, "sampler": "DPM++ 2M"}


@pytest.fixture(scope="module")
def engine():
    return Engine()


def drawn(shape="square", colour="red", background="blue", half=0.22, cx=0.5, cy=0.5):
    return Image.fromarray(render(Scene(shape, colour, background, half, cx, cy)))


def product_and_mask(photo, background):
    """The shape's pixels (everything not the background's colour) and the mask that regenerates the rest."""
    from pipelines.embedded.world import COLOURS

    kept = np.any(np.asarray(photo) != np.array(COLOURS[background], dtype=np.uint8), axis=2)
    return kept, Image.fromarray(np.where(kept, 0, 255).astype(np.uint8))


# -- image-to-image ------------------------------------------------------------


def test_img2img_repaints_the_background_and_keeps_the_composition(engine):
    photo = drawn("circle", "yellow", "blue", cx=0.35, cy=0.4)
    result = engine.run(
        Img2ImgRequest(
            prompt="a yellow circle on a red background", image=ImageRef.of(photo), strength=0.8, seed=2, **SETTINGS
        )
    )
    reading = classify(result.images[0])
    assert (reading.background, reading.colour, reading.shape) == ("red", "yellow", "circle")
    # The circle stays about where it was drawn.
    assert abs(reading.centre[0] - 0.35) < 0.1 and abs(reading.centre[1] - 0.4) < 0.1


def test_img2img_low_strength_keeps_the_picture(engine):
    """Low strength keeps the shape's size and place; a high one redraws it (the embedded model
    repaints a flat background from the prompt at any strength, so the prompt here describes the photo)."""
    photo = drawn("triangle", "white", "green", half=0.3, cx=0.6, cy=0.6)
    truth = classify(photo).mask

    def overlap(strength):
        request = Img2ImgRequest(
            prompt="a small white triangle on a green background",
            image=ImageRef.of(photo),
            strength=strength,
            seed=2,
            **SETTINGS,
        )
        image = engine.run(request).images[0]
        found = classify(image).mask
        return (found & truth).sum() / (found | truth).sum(), image

    kept, image = overlap(0.2)
    assert kept > 0.9
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(photo, dtype=int)).mean() < 8
    redrawn, _ = overlap(1.0)
    assert redrawn < kept


@pytest.mark.parametrize("mode", ["fit", "crop", "pad"])
def test_img2img_resize_modes_give_the_asked_size(engine, mode):
    wide = Image.fromarray(np.concatenate([render(Scene("square", "red", "blue", 0.22, 0.5, 0.5))] * 2, axis=1))
    request = Img2ImgRequest(
        prompt="a red square on a blue background",
        image=ImageRef.of(wide),
        width=64,
        height=64,
        resize_mode=mode,
        strength=0.3,
        seed=1,
        **SETTINGS,
    )
    image = engine.run(request).images[0]
    assert image.size == (64, 64)
    assert request.to_dict()["resize_mode"] == mode


def test_img2img_defaults_to_the_input_size():
    photo = Image.new("RGB", (100, 77), "white")
    request = Img2ImgRequest(prompt="a red circle", image=ImageRef.of(photo))
    assert (request.width, request.height) == (104, 80)


# -- product backgrounds -------------------------------------------------------


def test_inpaint_keeps_every_product_pixel_and_repaints_the_background(engine):
    photo = drawn("square", "red", "blue", half=0.2, cx=0.45, cy=0.55)
    kept, mask = product_and_mask(photo, "blue")
    for feather in (0, 4):
        result = engine.run(
            InpaintRequest(
                prompt="a red square on a yellow background",
                image=ImageRef.of(photo),
                mask_image=ImageRef.of(mask),
                mask_feather=feather,
                matting=False,  # a hard mask's every pixel; tests/pipelines/test_matting.py has the soft edge
                seed=5,
                **SETTINGS,
            )
        )
        output = np.asarray(result.images[0])
        assert output.shape == np.asarray(photo).shape
        assert np.array_equal(output[kept], np.asarray(photo)[kept]), f"product pixels changed (feather {feather})"
        assert classify(result.images[0]).background == "yellow"


def test_inpaint_one_image_per_prompt_line_with_the_same_seed(engine):
    photo = drawn("circle", "white", "black")
    kept, mask = product_and_mask(photo, "black")
    request = InpaintRequest(
        prompt="a white circle on a green background\n\na white circle on a purple background\n",
        image=ImageRef.of(photo),
        mask_image=ImageRef.of(mask),
        matting=False,
        seed=9,
        **SETTINGS,
    )
    result = engine.run(request)
    assert [classify(image).background for image in result.images] == ["green", "purple"]
    assert result.seeds == [9, 9]
    for image in result.images:
        assert np.array_equal(np.asarray(image)[kept], np.asarray(photo)[kept])


def test_inpaint_keeps_the_photo_size_when_it_is_not_a_multiple_of_8(engine):
    photo = Image.fromarray(render(Scene("square", "red", "blue", 0.22, 0.5, 0.5))).resize(
        (70, 66), Image.Resampling.NEAREST
    )
    kept, mask = product_and_mask(photo, "blue")
    request = InpaintRequest(
        prompt="a red square on a white background",
        image=ImageRef.of(photo),
        mask_image=ImageRef.of(mask),
        matting=False,
        seed=1,
        **SETTINGS,
    )
    image = engine.run(request).images[0]
    assert image.size == (70, 66)
    assert np.array_equal(np.asarray(image)[kept], np.asarray(photo)[kept])


def test_the_automatic_product_mask_finds_the_shape():
    photo = drawn("circle", "orange", "white", half=0.3)
    product, method = masks.product_mask(photo)
    truth = classify(photo).mask
    found = np.asarray(product) > 127
    assert method == "grabcut"
    assert (found & truth).sum() / (found | truth).sum() > 0.85


# -- ControlNet ----------------------------------------------------------------


def test_controlnet_puts_the_shape_where_the_edges_are(engine):
    """The prompt says nothing about the place; the edges of a circle in the bottom left do."""
    control = drawn("circle", "white", "black", half=0.2, cx=0.3, cy=0.7)
    for seed in (1, 2):
        result = engine.run(
            ControlNetRequest(
                prompt="a red circle on a blue background",
                controls=(ControlUnit(image=ImageRef.of(control)),),
                seed=seed,
                **SETTINGS,
            )
        )
        reading = classify(result.images[0])
        assert (reading.background, reading.colour, reading.shape) == ("blue", "red", "circle")
        assert abs(reading.centre[0] - 0.3) < 0.1 and abs(reading.centre[1] - 0.7) < 0.1
        role, edges = result.derived[0]
        assert role == "control"
        assert np.array_equal(np.asarray(edges)[..., 0], cv2.Canny(np.asarray(control), 100, 200))


def test_controlnet_scale_zero_is_plain_text_to_image(engine):
    control = drawn("circle", "white", "black", half=0.2, cx=0.3, cy=0.7)
    steered = engine.run(
        ControlNetRequest(
            prompt="a red square on a blue background",
            seed=3,
            controls=(ControlUnit(image=ImageRef.of(control), conditioning_scale=0.0),),
            **SETTINGS,
        )
    )
    plain = engine.run(
        Text2ImgRequest(prompt="a red square on a blue background", seed=3, width=64, height=64, **SETTINGS)
    )
    difference = np.abs(np.asarray(steered.images[0], dtype=int) - np.asarray(plain.images[0], dtype=int))
    assert difference.max() <= 2


def test_two_controlnets_at_once(engine):
    left = drawn("square", "white", "black", half=0.15, cx=0.3, cy=0.5)
    right = drawn("square", "white", "black", half=0.15, cx=0.7, cy=0.5)

    def run(*units):
        return engine.run(
            ControlNetRequest(prompt="a red square on a blue background", controls=units, seed=5, **SETTINGS)
        )

    only_left = run(ControlUnit(image=ImageRef.of(left)))
    both = run(ControlUnit(image=ImageRef.of(left)), ControlUnit(image=ImageRef.of(right), conditioning_scale=0.0))
    swapped = run(ControlUnit(image=ImageRef.of(right)), ControlUnit(image=ImageRef.of(left), conditioning_scale=0.0))
    assert [role for role, _ in both.derived] == ["control", "control"]
    # At scale 0 the second has no say: the same picture as the first alone.
    difference = np.abs(np.asarray(both.images[0], dtype=int) - np.asarray(only_left.images[0], dtype=int))
    assert difference.max() <= 2
    assert classify(both.images[0]).centre[0] < 0.5 < classify(swapped.images[0]).centre[0]


def test_controlnet_inpaint_keeps_the_product_and_pins_the_layout(engine):
    photo = drawn("square", "red", "blue", half=0.15, cx=0.3, cy=0.3)
    kept, mask = product_and_mask(photo, "blue")
    request = ControlNetRequest(
        prompt="a red square on a green background",
        image=ImageRef.of(photo),
        mask_image=ImageRef.of(mask),
        strength=1.0,
        controls=(ControlUnit(image=ImageRef.of(photo)),),
        seed=6,
        **SETTINGS,
    )
    image = engine.run(request).images[0]
    assert np.array_equal(np.asarray(image)[kept], np.asarray(photo)[kept])
    assert classify(image).background == "green"


def test_a_controlnet_for_another_model_is_refused_with_a_reason(engine, tiny_sd_controlnet_folder):
    control = drawn()
    request = ControlNetRequest(
        prompt="a red square",
        controls=(ControlUnit(image=ImageRef.of(control), controlnet=str(tiny_sd_controlnet_folder)),),
        **SETTINGS,
    )
    with pytest.raises(ModelError, match="made for another kind of model"):
        engine.run(request)


def test_an_unknown_controlnet_names_what_is_allowed(engine):
    request = ControlNetRequest(
        prompt="a red square",
        controls=(ControlUnit(image=ImageRef.of(drawn()), controlnet="no such thing"),),
        **SETTINGS,
    )
    with pytest.raises(ModelError, match="controlnet must be one of embedded-canny"):
        engine.run(request)


# -- one set of weights --------------------------------------------------------


def test_all_four_tasks_share_one_load_of_the_base_model():
    engine = Engine()
    photo = drawn()
    kept, mask = product_and_mask(photo, "blue")
    requests = [
        Text2ImgRequest(prompt="a red square on a blue background", width=64, height=64, **SETTINGS),
        Img2ImgRequest(prompt="a red square on a white background", image=ImageRef.of(photo), **SETTINGS),
        InpaintRequest(
            prompt="a red square on a green background",
            image=ImageRef.of(photo),
            mask_image=ImageRef.of(mask),
            **SETTINGS,
        ),
        ControlNetRequest(
            prompt="a red square on a black background", controls=(ControlUnit(image=ImageRef.of(photo)),), **SETTINGS
        ),
    ]
    for request in requests:
        assert engine.run(request).images
    loaded = engine.load("embedded")
    assert engine.loads == 1
    assert len(loaded.pipelines) == 4
    assert all(pipe.unet is loaded.base.unet and pipe.vae is loaded.base.vae for pipe in loaded.pipelines.values())


# -- the other families ----------------------------------------------------------


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_every_task_runs_on_tiny_sd_and_sdxl(
    family, tiny_sd_folder, tiny_sdxl_folder, tiny_sd_controlnet_folder, tiny_sdxl_controlnet_folder
):
    folder, controlnet = (
        (tiny_sd_folder, tiny_sd_controlnet_folder)
        if family == "sd"
        else (tiny_sdxl_folder, tiny_sdxl_controlnet_folder)
    )
    engine = Engine()
    photo = Image.new("RGB", (64, 64), (30, 60, 220))
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (16, 16, 48, 48))
    common = {"model": str(folder), "num_inference_steps": 2, "guidance_scale": 5.0, "seed": 3}
    requests = [
        Img2ImgRequest(prompt="a red square", image=ImageRef.of(photo), **common),
        InpaintRequest(prompt="a red square", image=ImageRef.of(photo), mask_image=ImageRef.of(mask), **common),
        ControlNetRequest(
            prompt="a red square",
            controls=(ControlUnit(image=ImageRef.of(photo), controlnet=str(controlnet)),),
            **common,
        ),
    ]
    for request in requests:
        image = engine.run(request).images[0]
        assert image.size == (64, 64)
    assert engine.loads == 1


def test_a_nine_channel_inpainting_model_runs_inpainting_only(tiny_sd_inpaint_folder):
    engine = Engine()
    photo = Image.new("RGB", (64, 64), (30, 60, 220))
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (16, 16, 48, 48))
    common = {"model": str(tiny_sd_inpaint_folder), "num_inference_steps": 2, "guidance_scale": 5.0, "seed": 3}
    image = engine.run(
        InpaintRequest(prompt="a red square", image=ImageRef.of(photo), mask_image=ImageRef.of(mask), **common)
    ).images[0]
    assert engine.load(str(tiny_sd_inpaint_folder)).base.unet.config.in_channels == 9
    assert np.array_equal(np.asarray(image)[16:48, 16:48], np.asarray(photo)[16:48, 16:48])
    with pytest.raises(ModelError, match="inpainting model"):
        engine.run(Text2ImgRequest(prompt="a red square", width=64, height=64, **common))
