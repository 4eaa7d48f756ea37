"""Marketplace-ready files from a product shot: presets for the frame, and the file with its metadata.

Large marketplaces want a main image on pure white (#FFFFFF) with the
product filling most of a square frame; others want a transparent cut-out,
and every shop wants web sizes. The presets here make those from the photo
and its matte (``pipelines.matting``), or resize a generated shot; ``encode``
writes PNG, WebP or JPEG with the generation's metadata in it: PNG text
chunks, and for WebP and JPEG the AUTOMATIC1111 ``parameters`` text as EXIF
UserComment (what A1111 writes there) plus the full request in XMP.

No torch; pixels in, pixels or bytes out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.limits import RequestError
from pipelines.matting import Matte

FORMATS = ("png", "webp", "jpeg")
WHITE = (255, 255, 255)
JPEG_QUALITY = 92
WEBP_QUALITY = 90
_USER_COMMENT, _EXIF_IFD = 0x9286, 0x8769


@dataclass(frozen=True)
class Preset:
    """``white``: the product on #FFFFFF, its longer side ``fill`` of a ``size`` square;
    ``cutout``: the product on transparency; ``web``: the shot, its longer side at most ``size``."""

    kind: str
    size: int = 0
    fill: float = 0.0


PRESETS = {
    # Amazon's main-image rule: pure white, the product filling 85% of the frame, 1600 px or more to zoom.
    "white-square-2000": Preset("white", 2000, 0.85),
    "white-square-1000": Preset("white", 1000, 0.85),
    "cutout": Preset("cutout"),
    "web-1600": Preset("web", 1600),
    "web-1200": Preset("web", 1200),
    "web-800": Preset("web", 800),
}


def _box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of everything the product covers even a little."""
    rows, cols = np.flatnonzero((alpha > 0).any(axis=1)), np.flatnonzero((alpha > 0).any(axis=0))
    if rows.size == 0:
        raise RequestError("the product mask is empty, so there is no product to frame; paint or find the product.")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def cutout(original: Image.Image, matte: Matte) -> Image.Image:
    """RGBA: the product's own colour (the old backdrop taken out of its edge) and the matte as alpha.

    Fully opaque pixels are the photo's, bit for bit; fully transparent ones are black.
    """
    alpha = matte.alpha[..., None]
    colour = np.where(alpha > 0, np.clip(np.rint(matte.foreground), 0, 255), 0).astype(np.uint8)
    colour = np.where(matte.kept[..., None], np.asarray(original.convert("RGB")), colour)
    opacity = np.rint(matte.alpha * 255).astype(np.uint8)
    return Image.fromarray(np.dstack([colour, opacity]), mode="RGBA")


def white_square(original: Image.Image, matte: Matte, *, size: int, fill: float) -> Image.Image:
    """The product on pure white, its longer side ``fill`` of a ``size`` x ``size`` frame, centred.

    The product is composited over white at the photo's size first, so the
    background around it is exactly 255 everywhere, resampling included.
    """
    left, top, right, bottom = _box(matte.alpha)
    alpha = matte.alpha[..., None]
    blended = np.clip(np.rint(matte.foreground * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)
    on_white = np.where(matte.kept[..., None], np.asarray(original.convert("RGB")), blended)
    product = Image.fromarray(on_white[top:bottom, left:right], mode="RGB")
    scale = fill * size / max(product.size)
    fitted = product.resize(
        (max(1, round(product.width * scale)), max(1, round(product.height * scale))), Image.Resampling.LANCZOS
    )
    frame = Image.new("RGB", (size, size), WHITE)
    frame.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return frame


def web(image: Image.Image, longest: int) -> Image.Image:
    """The image with its longer side at most ``longest`` (never enlarged)."""
    scale = longest / max(image.size)
    if scale >= 1:
        return image.copy()
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def apply(name: str, shot: Image.Image, original: Image.Image, matte: Matte) -> Image.Image:
    """Preset ``name`` applied: ``shot`` is the generated product shot, used by the web sizes."""
    if name not in PRESETS:
        raise RequestError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}.")
    preset = PRESETS[name]
    if preset.kind == "white":
        return white_square(original, matte, size=preset.size, fill=preset.fill)
    if preset.kind == "cutout":
        return cutout(original, matte)
    return web(shot, preset.size)


def _xmp(text: Mapping[str, str]) -> bytes:
    fields = " ".join(f"atelier:{key}={quoteattr(value)}" for key, value in sorted(text.items()))
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:atelier="https://atelier.invalid/ns/1.0/" {fields}/>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()


def encode(image: Image.Image, fmt: str, text: Mapping[str, str]) -> bytes:
    """The image as a ``fmt`` file carrying ``text`` (the PNG text chunks a generation's file has)."""
    if fmt not in FORMATS:
        raise RequestError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    if fmt == "jpeg" and image.mode == "RGBA":
        raise RequestError("format jpeg has no transparency; choose png or webp for a cut-out.")
    out = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
        image.save(out, format="PNG", pnginfo=info)
        return out.getvalue()
    exif = Image.Exif()
    if "parameters" in text:
        # EXIF UserComment: an 8-byte character code, then the text (A1111 writes UNICODE, UTF-16).
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + text["parameters"].encode("utf-16-be")
    options = {"exif": exif.tobytes(), "xmp": _xmp(text)}
    if fmt == "jpeg":
        image.save(out, format="JPEG", quality=JPEG_QUALITY, **options)
    else:
        cut_out = image.mode == "RGBA"  # lossless, so the matte and the colour under it survive exactly
        image.save(out, format="WEBP", quality=WEBP_QUALITY, lossless=cut_out, exact=cut_out, **options)
    return out.getvalue()
