"""JPEG and WebP EXIF, and A1111's stealth PNG metadata, written as each tool writes them."""

from __future__ import annotations

import gzip
import io
import json

import piexif
import piexif.helper
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.imports import Catalog, MetadataError, import_file, read_file_text

INFOTEXT = (
    "a lighthouse at dusk, <lora:detail_tweaker:0.6>, (oil painting:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)
CATALOG = Catalog.of(loras=["detail_tweaker"])


def a1111_jpeg(geninfo: str, image_format: str = "JPEG") -> bytes:
    """modules/images.py `save_image_with_geninfo`: the image saved, then its infotext as the Exif UserComment,
    `piexif.helper.UserComment.dump(geninfo, encoding="unicode")` (inserted with piexif.insert for JPEG,
    passed as `exif=` for WebP)."""
    exif_bytes = piexif.dump(
        {"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(geninfo, encoding="unicode")}}
    )
    buffer = io.BytesIO()
    image = Image.new("RGB", (64, 48), "navy")
    if image_format == "WEBP":
        image.save(buffer, format="WEBP", quality=80, lossless=False, exif=exif_bytes)
        return buffer.getvalue()
    image.save(buffer, format="JPEG", quality=80)
    out = io.BytesIO()
    piexif.insert(exif_bytes, buffer.getvalue(), out)
    return out.getvalue()


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_a1111_exif_user_comment(image_format: str) -> None:
    data = a1111_jpeg(INFOTEXT, image_format)
    assert read_file_text(data) == {"parameters": INFOTEXT}

    imported = import_file(data, CATALOG)
    request = imported.request
    assert imported.source == "automatic1111"
    assert (request.prompt, request.negative_prompt) == ("a lighthouse at dusk, , (oil painting:1.2)", "blurry, lowres")
    assert (request.seed, request.num_inference_steps, request.guidance_scale) == (1234567, 28, 6.5)
    assert (request.width, request.height, request.sampler) == (512, 768, "DPM++ 2M Karras")
    assert request.loras == (("detail_tweaker", 0.6),)
    assert imported.unmapped == {"Model": "v1-5-pruned-emaonly", "Model hash": "6ce0161689", "Version": "v1.10.1"}


def test_a1111_img2img_infotext_asks_for_its_image() -> None:
    text = (
        "a cat, watercolor\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 0.45"
    )
    imported = import_file(a1111_jpeg(text))

    assert (imported.task, imported.task_fields) == ("img2img", {"strength": 0.45})
    assert [ref.field for ref in imported.needs] == ["image"]
    assert imported.unmapped == {}


def test_a1111_lora_tag_not_in_the_folder_is_listed_and_taken_out_of_the_prompt() -> None:
    imported = import_file(a1111_jpeg("a fox <lora:unknown_style:0.8>\nSteps: 20, Sampler: Euler, Seed: 1"))

    assert imported.request.prompt == "a fox"
    assert imported.request.loras == ()
    assert imported.unmapped == {"<lora:unknown_style>": "0.8"}


def test_user_comment_encodings() -> None:
    from webui.imports.files import user_comment

    assert user_comment(piexif.helper.UserComment.dump("ü ok", encoding="unicode")) == "ü ok"
    assert user_comment(b"UNICODE\0" + "ü ok".encode("utf-16-le")) == "ü ok"
    assert user_comment(piexif.helper.UserComment.dump("plain", encoding="ascii")) == "plain"
    assert user_comment(b"\0" * 8 + b"undefined") == "undefined"
    assert user_comment("as text") == "as text"


def fooocus_exif_jpeg(parameters: str, scheme: str) -> bytes:
    """Fooocus modules/private_logger.py `log` with modules/meta_parser.py `get_exif`: Pillow's Exif with the
    metadata as UserComment (0x9286), "Fooocus v2.5.5" as Software (0x0131) and the scheme as MakerNote (0x927C)."""
    exif = Image.Exif()
    exif[0x9286] = parameters
    exif[0x0131] = "Fooocus v2.5.5"
    exif[0x927C] = scheme
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(
        buffer, format="JPEG", quality=95, optimize=True, progressive=True, exif=exif
    )
    return buffer.getvalue()


def test_fooocus_jpeg_exif_in_ifd0() -> None:
    parameters = json.dumps({"prompt": "a cat", "seed": "42", "steps": 30, "sampler": "euler", "scheduler": "normal"})
    data = fooocus_exif_jpeg(parameters, "fooocus")

    assert read_file_text(data) == {"parameters": parameters, "fooocus_scheme": "fooocus", "Software": "Fooocus v2.5.5"}
    imported = import_file(data)
    assert imported.source == "fooocus"
    assert (imported.request.prompt, imported.request.seed, imported.request.sampler) == ("a cat", 42, "Euler")


def stealth_png(text: str, *, mode: str = "alpha", compressed: bool = True, size: tuple[int, int] = (64, 64)) -> bytes:
    """sd_webui_stealth_pnginfo scripts/stealth_pnginfo.py `prepare_data` + `add_data`: signature, 32-bit length in
    bits, then the (gzipped) text, written column by column into the alpha's lowest bit, or three bits a pixel into
    red, green and blue in rgb mode. The PNG keeps no text chunk (as after a site strips them)."""
    signature = f"stealth_{'png' if mode == 'alpha' else 'rgb'}{'comp' if compressed else 'info'}"
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    bits = "".join(f"{byte:08b}" for byte in signature.encode()) + f"{len(payload) * 8:032b}"
    bits += "".join(f"{byte:08b}" for byte in payload)
    image = Image.new("RGB", size, (200, 100, 50))
    if mode == "alpha":
        image.putalpha(255)
    pixels = image.load()
    index = 0
    for x in range(image.width):
        for y in range(image.height):
            if index >= len(bits):
                break
            values = list(pixels[x, y])
            for channel in [3] if mode == "alpha" else [0, 1, 2]:
                if index < len(bits):
                    values[channel] = (values[channel] & ~1) | int(bits[index])
                    index += 1
            pixels[x, y] = tuple(values)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "compressed"), [("alpha", True), ("alpha", False), ("rgb", True), ("rgb", False)])
def test_a1111_stealth_metadata(mode: str, compressed: bool) -> None:
    data = stealth_png(INFOTEXT, mode=mode, compressed=compressed)

    assert read_file_text(data) == {"parameters": INFOTEXT}
    imported = import_file(data, CATALOG)
    assert (imported.source, imported.request.seed, imported.request.loras) == (
        "automatic1111",
        1234567,
        (("detail_tweaker", 0.6),),
    )


def test_png_text_wins_over_stealth_and_plain_pixels_are_not_stealth() -> None:
    info = PngInfo()
    info.add_text("parameters", "from the chunk\nSteps: 20, Sampler: Euler, Seed: 9")
    image = Image.open(io.BytesIO(stealth_png(INFOTEXT)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    assert import_file(buffer.getvalue()).request.prompt == "from the chunk"

    plain = io.BytesIO()
    Image.new("RGBA", (64, 64), (1, 2, 3, 255)).save(plain, format="PNG")
    assert read_file_text(plain.getvalue()) == {}


def test_stealth_length_past_the_image_is_one_sentence() -> None:
    data = stealth_png("x" * 10, compressed=False, size=(16, 16))
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    pixels = image.load()
    # Bits 120-151 (after the 15-byte signature), column by column: the length, set to all ones.
    for bit in range(120, 152):
        x, y = divmod(bit, 16)
        r, g, b, a = pixels[x, y]
        pixels[x, y] = (r, g, b, a | 1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with pytest.raises(MetadataError, match="stealth metadata says it is .* bits long, which the image cannot hold"):
        import_file(buffer.getvalue())


def test_gzip_bomb_in_stealth_metadata_is_refused() -> None:
    bomb = "a" * 5_000_000
    with pytest.raises(MetadataError, match="inflates past 1,000,000 characters"):
        import_file(stealth_png(bomb, size=(256, 256)))
