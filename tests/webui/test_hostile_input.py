"""Hostile prompts, search text and uploads against the launched app.

Each gets one clear sentence and leaves nothing behind, or is accepted and
stored exactly as sent (prompts) or as the normalised image (uploads); the
server keeps serving either way. The first hostile uploads (not an image, a
truncated PNG, 100,000 x 1 pixels) are in test_tasks.py; these are the rest
of issue 7's list.
"""

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image, ImageFile

from pipelines.images import load_image
from storage.pngmeta import read_png_metadata

# sampler, steps, guidance, width, height, seed, batch size: small and quick on a CPU.
TXT2IMG = ["Euler", 2, 5.0, 64, 64, 7, 1]
IMG2IMG = ["Euler", 4, 5.0, 7, 1, 0, 0]  # sampler, steps, guidance, seed, batch size, width, height (0: the image's)


def written(studio) -> tuple[int, set[str]]:
    """Rows and files (images, thumbnails, pending) in the data folder."""
    root = studio.settings.data_dir
    files = {
        str(p.relative_to(root))
        for folder in ("images", "thumbs", "pending")
        for p in (root / folder).rglob("*")
        if p.is_file()
    }
    return studio.gallery.count(), files


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and "Traceback" not in message


def still_serving(client: Client, studio) -> None:
    *_, details = client.predict("a red circle on a blue background", "", *TXT2IMG, api_name="/txt2img")
    assert studio.gallery.get(details["id"]).status == "succeeded"


# -- prompts ---------------------------------------------------------------------------


def test_a_100000_character_prompt_is_refused_in_one_sentence(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    before = written(studio)
    with pytest.raises(Exception) as caught:
        client.predict("x" * 100_000, "", *TXT2IMG, api_name="/txt2img")
    assert str(caught.value) == "prompt must be at most 10,000 characters; got 100,000."
    assert written(studio) == before
    still_serving(client, studio)


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle\x00 on a blue background",
        "\x1b[31ma red circle\x1b[0m on a blue background",
        "a red circle \u202eon a blue background",
        "a red circle <img src=x onerror=alert(1)>",
        "<script>alert(1)</script> a red circle",
        "'; DROP TABLE generations; --",
        "a red circle\r\n\ton a blue background \U0001f600 \u200b",
    ],
    ids=["nul", "ansi", "rtl-override", "img-onerror", "script", "sql", "whitespace-emoji"],
)
def test_hostile_prompts_are_stored_verbatim_or_refused_cleanly(launched, prompt):
    studio, url = launched
    client = Client(url, verbose=False)
    before = written(studio)
    try:
        _, _, details = client.predict(prompt, prompt, *TXT2IMG, api_name="/txt2img")
    except Exception as error:  # refused: one sentence naming the prompt, nothing written
        message = str(error)
        assert message.startswith(("prompt", "negative_prompt")) and one_sentence(message), message
        assert written(studio) == before
    else:
        record = studio.gallery.get(details["id"])
        assert record.status == "succeeded"
        # Exactly what was sent: in the row, the stored request, the reply, the gallery's record
        # view and the PNG's own metadata (what an import reads back).
        assert record.prompt == prompt and record.negative_prompt == prompt
        assert record.params["prompt"] == prompt and details["params"]["prompt"] == prompt
        shown = client.predict(record.id, api_name="/gallery_record")[6]
        assert shown["prompt"] == prompt and shown["negative_prompt"] == prompt
        metadata = read_png_metadata(studio.gallery.path(record.outputs[0].path))
        assert json.loads(metadata["atelier"])["prompt"] == prompt
        assert metadata["parameters"].startswith(prompt)
    still_serving(client, studio)


# -- gallery search ------------------------------------------------------------------------

SEARCH_FILTERS = ["everyone", "", "", "any", "any", False, "", "any", "", "", "succeeded"]


@pytest.mark.parametrize(
    "text",
    [
        "'; DROP TABLE generations; --",
        "'); DELETE FROM generations WHERE ('1'='1",
        '"unbalanced',
        "NEAR(",
        "NEAR(red circle, 2)",
        "*",
        "red*",
        "OR OR",
        "AND",
        "NOT red",
        "prompt:red",
        "^red",
        "{red circle}",
        "%_%",
        "\x00",
        "\\",
        "x" * 600,
    ],
)
def test_search_text_is_only_words_never_a_server_error(launched, text):
    """The search route answers 200 with results, or a gr.Error sentence; never an unhandled exception."""
    studio, url = launched
    before = written(studio)
    response = httpx.post(f"{url}gradio_api/run/gallery_search", json={"data": [text, *SEARCH_FILTERS]}, timeout=60)
    if response.status_code == 200:
        items, ids, info = response.json()["data"][:3]
        assert "of" in str(info)
    else:
        # Gradio answers 500 for every error; a gr.Error (a message meant for the user) carries a title.
        payload = response.json()
        assert "title" in payload, payload
        assert one_sentence(payload["error"]), payload
    assert written(studio) == before
    assert studio.gallery.count() == before[0]  # the table the SQL named is still there


def test_search_finds_the_sql_looking_prompt_by_its_words(launched):
    studio, url = launched
    client = Client(url, verbose=False)
    client.predict("'; DROP TABLE generations; -- zebracorn", "", *TXT2IMG, api_name="/txt2img")
    items, info = client.predict("DROP TABLE zebracorn", *SEARCH_FILTERS, api_name="/gallery_search")
    assert "1–1 of 1" in info
    assert items[0]["caption"].endswith("· '; DROP TABLE generations; -- zebracorn")


# -- uploads ------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int, *, rows: int) -> bytes:
    """A PNG whose header claims side x side RGB pixels, with `rows` rows of zeros: a few hundred kB at most."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    packer, row = zlib.compressobj(9), b"\0" * (1 + 3 * side)
    data = b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def animated_gif(path: Path) -> Image.Image:
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    red.save(path, format="GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    return red


def cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)


def sixteen_bit_png(path: Path) -> np.ndarray:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(path, format="PNG")  # mode I;16: a 16-bit greyscale PNG
    assert Image.open(path).mode in ("I;16", "I")
    return ramp


def exif_rotated_jpeg(path: Path) -> None:
    """128 x 64 as stored, red on the left; orientation 6 says: turn it 90° clockwise to view, red on top."""
    stored = np.zeros((64, 128, 3), dtype=np.uint8)
    stored[:, :64] = (255, 0, 0)
    stored[:, 64:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif.tobytes())


PAYLOAD = b"POLYGLOT-PAYLOAD-5f1c2e"


def polyglot(path: Path) -> None:
    """A valid PNG (with the payload in a text chunk) followed by a ZIP archive holding the payload."""
    buffer = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", PAYLOAD.decode())
    Image.new("RGB", (64, 64), "green").save(buffer, format="PNG", pnginfo=info)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.sh", PAYLOAD + b"\necho pwned\n")
    path.write_bytes(buffer.getvalue() + archive.getvalue())
    assert zipfile.is_zipfile(path) and Image.open(path).size == (64, 64)


def stored_input(studio, record) -> tuple[bytes, Image.Image]:
    [ref] = [i for i in record.images if i.role == "input"]
    data = Path(studio.gallery.path(ref.path)).read_bytes()
    return data, Image.open(io.BytesIO(data))


def send(client: Client, path: Path):
    return client.predict(
        handle_file(str(path)), "a red square on a blue background", "", 0.5, "fit", *IMG2IMG, api_name="/img2img"
    )


@pytest.mark.parametrize(
    ("side", "rows"),
    [
        (50_000, 4),  # claims 7.5 GB: past Pillow's own bomb limit (the rest of the rows are missing)
        (8_000, 8_000),  # a whole, valid 192 MB image in under 200 kB: under Pillow's limit, over the studio's
    ],
)
def test_a_decompression_bomb_is_refused_from_its_header(launched, tmp_path, monkeypatch, side, rows):
    studio, url = launched
    client = Client(url, verbose=False)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side, rows=rows))
    assert path.stat().st_size < 200_000
    # The app runs in this process: watch Pillow for anyone decoding the bomb's pixels.
    decoded, load = [], ImageFile.ImageFile.load

    def watched_load(image):
        if image.size == (side, side):
            decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched_load)
    before = written(studio)
    with pytest.raises(Exception) as caught:
        send(client, path)
    message = str(caught.value)
    # The size is what is wrong, said in one sentence, and not a pixel was decoded to find out.
    # (Past Pillow's limit the header is not read to the end, so the size may go unsaid.)
    assert message.startswith("image must") and one_sentence(message), message
    assert f"got {side}x{side}." in message or "at most 16,777,216 pixels" in message, message
    assert decoded == []
    assert written(studio) == before
    _, _, details = send(client, _plain_png(tmp_path))
    assert studio.gallery.get(details["id"]).status == "succeeded"


def _plain_png(tmp_path: Path) -> Path:
    path = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), "red").save(path)
    return path


def test_an_animated_gif_gives_its_first_frame(launched, tmp_path):
    studio, url = launched
    client = Client(url, verbose=False)
    first = animated_gif(tmp_path / "animated.gif")
    _, _, details = send(client, tmp_path / "animated.gif")
    record = studio.gallery.get(details["id"])
    assert record.status == "succeeded"
    _, image = stored_input(studio, record)
    assert image.mode == "RGB" and image.size == (64, 64) and not getattr(image, "is_animated", False)
    # GIF's palette keeps pure red exactly.
    assert np.array_equal(np.asarray(image), np.asarray(first))


def test_a_cmyk_jpeg_is_stored_as_rgb(launched, tmp_path):
    studio, url = launched
    client = Client(url, verbose=False)
    path = tmp_path / "cmyk.jpg"
    cmyk_jpeg(path)
    _, _, details = send(client, path)
    record = studio.gallery.get(details["id"])
    assert record.status == "succeeded"
    _, image = stored_input(studio, record)
    assert image.mode == "RGB" and image.size == (64, 64)
    pixels = np.asarray(image, dtype=int)
    assert np.array_equal(pixels, np.asarray(load_image(path, field="image"), dtype=int))  # the normalised upload
    assert np.abs(pixels.mean(axis=(0, 1)) - (255, 0, 0)).max() < 8  # and red, as the CMYK ink said


def test_a_16_bit_png_is_scaled_to_8_bits(launched, tmp_path):
    studio, url = launched
    client = Client(url, verbose=False)
    path = tmp_path / "deep.png"
    ramp = sixteen_bit_png(path)
    _, _, details = send(client, path)
    record = studio.gallery.get(details["id"])
    assert record.status == "succeeded"
    _, image = stored_input(studio, record)
    assert image.mode in ("RGB", "L") and image.size == (64, 64)
    grey = np.asarray(image.convert("L"), dtype=int)
    # Scaled, not clipped at 255 (a clipped ramp would be almost all white).
    expected = (ramp.astype(np.int64) * 255 + 32767) // 65535
    assert np.array_equal(grey, expected)


def test_an_exif_rotated_jpeg_is_stored_upright(launched, tmp_path):
    studio, url = launched
    client = Client(url, verbose=False)
    path = tmp_path / "rotated.jpg"
    exif_rotated_jpeg(path)
    _, _, details = send(client, path)
    record = studio.gallery.get(details["id"])
    assert record.status == "succeeded"
    data, image = stored_input(studio, record)
    # Turned once (not twice, not never): 64 wide, 128 tall, red on top, blue below, no orientation left.
    assert image.size == (64, 128)
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert np.abs(pixels[8:56].mean(axis=(0, 1)) - (255, 0, 0)).max() < 20
    assert np.abs(pixels[72:120].mean(axis=(0, 1)) - (0, 0, 255)).max() < 20
    assert image.getexif().get(0x0112, 1) == 1


def test_a_png_zip_polyglot_is_stored_without_its_payload(launched, tmp_path):
    studio, url = launched
    client = Client(url, verbose=False)
    path = tmp_path / "polyglot.png"
    polyglot(path)
    _, _, details = send(client, path)
    record = studio.gallery.get(details["id"])
    assert record.status == "succeeded"
    data, image = stored_input(studio, record)
    assert PAYLOAD not in data and b"PK\x03\x04" not in data and not zipfile.is_zipfile(io.BytesIO(data))
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.new("RGB", (64, 64), "green")))
    # Nothing of the upload's text chunks either.
    assert "Comment" not in image.info
