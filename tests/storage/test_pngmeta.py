from __future__ import annotations

import io
import json

import numpy as np
import piexif
import piexif.helper
import pytest
from PIL import Image

from storage.files import encode_png
from storage.pngmeta import (
    a1111_parameters,
    exif_copy,
    png_text_chunks,
    read_png_metadata,
    read_user_comment,
    user_comment,
)

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
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")

    with pytest.raises(ValueError, match=r"Expected a PNG file, got GIF\."):
        read_png_metadata(buffer)


# -- JPEG and WebP: the parameters text in EXIF UserComment, as AUTOMATIC1111 writes it (issue 19) ----------


def gallery_png(prompt: str = "un cercle rouge, 赤い円 🎨") -> tuple[bytes, dict[str, str]]:
    chunks = png_text_chunks({**PARAMS, "prompt": prompt, "seed": 2**64 - 1}, seed=2**64 - 1)
    pixels = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    return encode_png(pixels, text=chunks), chunks


@pytest.mark.parametrize("format", ["jpeg", "webp"])
def test_a_jpeg_or_webp_copy_carries_the_parameters_and_reads_back(format: str) -> None:
    png, chunks = gallery_png()

    data = exif_copy(png, format)

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == {"jpeg": "JPEG", "webp": "WEBP"}[format]
        assert image.size == (64, 48)
        with Image.open(io.BytesIO(png)) as original:
            # Lossy, but the same picture.
            difference = np.abs(np.asarray(image, np.int16) - np.asarray(original.convert("RGB"), np.int16))
        assert difference.mean() < 3
        exif = image.info["exif"]
    # Atelier's own reader, and AUTOMATIC1111's (modules/images.py read_info_from_image, through piexif).
    assert read_png_metadata(io.BytesIO(data)) == {"parameters": chunks["parameters"]}
    comment = piexif.load(exif)["Exif"][piexif.ExifIFD.UserComment]
    assert piexif.helper.UserComment.load(comment) == chunks["parameters"]
    assert f"Seed: {2**64 - 1}," in chunks["parameters"]
    assert exif_copy(png, format) == data  # the same PNG gives the same bytes


@pytest.mark.parametrize("format", ["JPEG", "WEBP"])
def test_a_file_saved_the_way_a1111_saves_it_is_read(tmp_path, format: str) -> None:
    text = "a cat, 猫\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, Seed: 1"
    path = tmp_path / f"a1111.{format.lower()}"
    Image.new("RGB", (16, 16), "blue").save(path, format=format, quality=80)
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text, encoding="unicode")}})
    piexif.insert(exif, str(path))

    assert read_png_metadata(path) == {"parameters": text}


def test_user_comments_in_other_encodings() -> None:
    assert read_user_comment(user_comment("a cat")) == "a cat"
    assert read_user_comment(b"UNICODE\0" + "a cat".encode("utf-16-le")) == "a cat"
    assert read_user_comment(b"ASCII\0\0\0a cat") == "a cat"
    assert read_user_comment(b"\0" * 8 + "a cät".encode()) == "a cät"


def test_a_jpeg_without_exif_has_no_parameters_and_a_png_without_parameters_copies_plain() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    assert read_png_metadata(io.BytesIO(buffer.getvalue())) == {}
    plain = encode_png(Image.new("RGB", (8, 8), "red"))
    assert read_png_metadata(exif_copy(plain, "jpeg")) == {}
    with pytest.raises(ValueError, match="format must be one of jpeg, webp; got 'gif'."):
        exif_copy(plain, "gif")
