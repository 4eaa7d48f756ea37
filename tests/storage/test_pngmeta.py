from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from storage.files import encode_png
from storage.pngmeta import a1111_parameters, png_text_chunks, read_png_metadata

PARAMS = {
    "task": "txt2img",
    "model": "embedded",
    "prompt": "a red circle",
    "negative_prompt": "blurry",
    "num_inference_steps": 20,
    "sampler": "Euler a",
    "guidance_scale": 7,
    "seed": 42,
    "width": 64,
    "height": 64,
    "batch_size": 2,
}


def test_a1111_parameters_layout() -> None:
    assert a1111_parameters(PARAMS, seed=42) == (
        "a red circle\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 64x64, Model: embedded"
    )


def test_a1111_parameters_omits_empty_negative_prompt_and_adds_strength() -> None:
    text = a1111_parameters({**PARAMS, "negative_prompt": "", "strength": 0.75}, seed=7)

    assert text == (
        "a red circle\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 7, Size: 64x64, Model: embedded, "
        "Denoising strength: 0.75"
    )


def test_a1111_parameters_names_missing_keys() -> None:
    params = {key: value for key, value in PARAMS.items() if key not in ("sampler", "model")}

    with pytest.raises(ValueError, match="params lacks sampler, model"):
        a1111_parameters(params, seed=1)


def test_chunks_carry_this_images_seed_and_the_whole_request() -> None:
    chunks = png_text_chunks(PARAMS, seed=43)

    assert "Seed: 43," in chunks["parameters"]
    assert json.loads(chunks["atelier"]) == {**PARAMS, "image_seed": 43}
    assert chunks == png_text_chunks(dict(reversed(list(PARAMS.items()))), seed=43)


def test_chunks_round_trip_through_a_png_beyond_latin_1() -> None:
    params = {**PARAMS, "prompt": "un cercle rouge, 赤い円"}
    chunks = png_text_chunks(params, seed=42)
    image = Image.new("RGB", (8, 8), "red")

    data = encode_png(image, text=chunks)

    assert read_png_metadata(io.BytesIO(data)) == chunks
    assert data == encode_png(image, text=chunks)  # no timestamp: same input, same bytes


def test_read_png_metadata_refuses_other_formats() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")

    with pytest.raises(ValueError, match=r"Expected a PNG file, got JPEG\."):
        read_png_metadata(buffer)
