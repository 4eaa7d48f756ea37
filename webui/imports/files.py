"""The text a PNG, JPEG or WebP file carries, under the names the readers know it by.

- PNG: every text chunk (storage/pngmeta.py reads them). Where none is a
  tool's, A1111's "stealth" metadata is looked for in the pixels: the
  sd_webui_stealth_pnginfo extension (scripts/stealth_pnginfo.py, `add_data`)
  writes a signature (`stealth_pnginfo`, or `stealth_pngcomp` gzipped) into
  the alpha channel's lowest bits, column by column, then the length in bits
  as 32 bits, then the text; its `rgb` mode writes three bits a pixel into
  red, green and blue instead (`stealth_rgbinfo` / `stealth_rgbcomp`).
- JPEG and WebP: EXIF. A1111 and Forge write the infotext as the Exif IFD's
  UserComment, `piexif.helper.UserComment.dump(text, encoding="unicode")`:
  the 8-byte prefix `UNICODE\\0`, then UTF-16 big-endian (modules/images.py,
  `save_image_with_geninfo`); it becomes `parameters`, as A1111's own reader
  does. Fooocus writes it through Pillow into IFD0 as plain text, with its
  scheme (`fooocus` or `a1111`) as MakerNote and `Fooocus v...` as Software
  (modules/meta_parser.py, `get_exif`); those become `parameters`,
  `fooocus_scheme` and `Software`.
"""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from storage.pngmeta import MAX_PIXELS, NotPng, PngMetadataError, read_png_metadata
from storage.pngmeta import read_user_comment as user_comment
from webui.imports.common import MAX_CHUNK_CHARS, MetadataError

MAX_FILE_BYTES = 256 * 1024 * 1024
KNOWN_KEYS = ("atelier", "invokeai_metadata", "sd-metadata", "Dream", "prompt", "parameters", "Comment")

_USER_COMMENT, _MAKER_NOTE, _SOFTWARE, _EXIF_IFD = 0x9286, 0x927C, 0x0131, 0x8769
_STEALTH_ALPHA = {b"stealth_pnginfo": False, b"stealth_pngcomp": True}
_STEALTH_RGB = {b"stealth_rgbinfo": False, b"stealth_rgbcomp": True}
_SIGNATURE_BITS, _LENGTH_BITS = 15 * 8, 32


def read_file_text(source: str | Path | bytes | IO[bytes]) -> dict[str, str]:
    """Keyword -> text for every piece of metadata in the file (a path, its bytes or an open file)."""
    data = _bytes(source)
    if data[:3] == b"\xff\xd8\xff" or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        # JPEG and WebP: every EXIF field the tools use, not only the UserComment the gallery's reader wants.
        return _exif_text(data)
    try:
        chunks = read_png_metadata(data)
    except NotPng as error:
        raise MetadataError(
            f"The file is a {error.format} image; Atelier reads metadata from PNG, JPEG and WebP files."
        ) from None
    except PngMetadataError as error:
        raise MetadataError(str(error)) from None
    if not any(key in chunks for key in KNOWN_KEYS):
        stealth = _stealth_text(data)
        if stealth is not None:
            chunks["parameters"] = stealth
    return chunks


def _bytes(source: str | Path | bytes | IO[bytes]) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        try:
            if Path(source).stat().st_size > MAX_FILE_BYTES:
                raise MetadataError(f"{source} is over {MAX_FILE_BYTES // 2**20} MiB; Atelier reads smaller files.")
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise MetadataError(f"{source} does not exist.") from None
        except OSError as error:
            raise MetadataError(f"{source} cannot be read: {error.strerror}.") from None
    data = source.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise MetadataError(f"The file is over {MAX_FILE_BYTES // 2**20} MiB; Atelier reads smaller files.")
    return data


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise MetadataError(f"The file is not an image Atelier can read: {error}") from None
    if image.width * image.height > MAX_PIXELS:
        raise MetadataError(
            f"The image is {image.width}x{image.height} pixels; Atelier reads at most {MAX_PIXELS:,} pixels."
        )
    return image


def _exif_text(data: bytes) -> dict[str, str]:
    with _open(data) as image:
        try:
            exif = image.getexif()
            inner = exif.get_ifd(_EXIF_IFD)
        except (OSError, ValueError, SyntaxError, EOFError, KeyError, TypeError) as error:
            raise MetadataError(f"The image's EXIF data is damaged: {error}") from None
    found: dict[str, str] = {}
    comment = inner.get(_USER_COMMENT, exif.get(_USER_COMMENT))
    if comment is not None:
        found["parameters"] = user_comment(comment)
    for tag, key in ((_MAKER_NOTE, "fooocus_scheme"), (_SOFTWARE, "Software")):
        value = exif.get(tag, inner.get(tag))
        if value is not None:
            found[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return {key: value.rstrip("\0") for key, value in found.items()}


def _stealth_text(data: bytes) -> str | None:
    """A1111's stealth metadata from the pixels' lowest bits, or None where the signature is not there."""
    with _open(data) as image:
        if image.mode not in ("RGBA", "RGB"):
            return None
        try:
            pixels = np.asarray(image)
        except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as error:
            raise MetadataError(f"The PNG is damaged and could not be read: {error}") from None
    if image.mode == "RGBA":
        # Column by column: x outer, y inner, one bit a pixel.
        found = _stealth_bits((pixels[:, :, 3] & 1).T.reshape(-1), _STEALTH_ALPHA)
        if found is not None:
            return found
    return _stealth_bits((pixels[:, :, :3] & 1).transpose(1, 0, 2).reshape(-1), _STEALTH_RGB)


def _stealth_bits(bits: np.ndarray, signatures: dict[bytes, bool]) -> str | None:
    header = _SIGNATURE_BITS + _LENGTH_BITS
    if bits.size < header:
        return None
    signature = np.packbits(bits[:_SIGNATURE_BITS]).tobytes()
    if signature not in signatures:
        return None
    length = int.from_bytes(np.packbits(bits[_SIGNATURE_BITS:header]).tobytes(), "big")
    if length % 8 or length > 8 * MAX_CHUNK_CHARS or header + length > bits.size:
        raise MetadataError(
            f"The image's stealth metadata says it is {length:,} bits long, which the image cannot hold."
        )
    payload = np.packbits(bits[header : header + length]).tobytes()
    if signatures[signature]:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip, bounded: a small payload may inflate hugely
        try:
            payload = inflate.decompress(payload, 4 * MAX_CHUNK_CHARS)
        except zlib.error as error:
            raise MetadataError(f"The image's compressed stealth metadata is damaged: {error}.") from None
        if inflate.unconsumed_tail:
            raise MetadataError(
                f"The image's stealth metadata inflates past {MAX_CHUNK_CHARS:,} characters; Atelier reads at most that."
            )
    return payload.decode("utf-8", "replace")
