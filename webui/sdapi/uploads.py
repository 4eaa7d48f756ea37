"""Images as A1111 clients send them: raw base64 or a data: URL, decoded and passed through the image door.

The bytes go to `pipelines.images.load_image`, the same door as the tabs'
uploads, so a hostile file is refused the same way. URLs are refused: A1111
fetches them when allowed, but a studio that fetched whatever a client
names could be made to reach into its own network.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from PIL import Image

from pipelines.images import load_image
from pipelines.limits import RequestError

# Base64 of the largest upload the image door lets through, with room: 16.7 Mpx at 4 bytes, uncompressed.
MAX_IMAGE_CHARS = 96 * 1024 * 1024


def decode_image(value: Any, field_name: str) -> Image.Image:
    """A base64 image or data: URL through the image door; URLs are refused (the studio fetches nothing)."""
    return load_image(decode_bytes(value, field_name), field=field_name)


def decode_bytes(value: Any, field_name: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field_name} must be a base64 image or a data:image/...;base64, URL.")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        raise RequestError(f"{field_name} must be the image itself, in base64; Atelier does not fetch URLs.")
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise RequestError(f"{field_name} must be a data:image/...;base64, URL; got {header[:40]!r}.")
    if len(text) > MAX_IMAGE_CHARS:
        raise RequestError(f"{field_name} must be at most {MAX_IMAGE_CHARS // 1024 // 1024} MiB of base64.")
    try:
        # Some clients drop the padding or wrap lines; both are still the same bytes.
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise RequestError(f"{field_name} must be base64; it could not be decoded.") from None
