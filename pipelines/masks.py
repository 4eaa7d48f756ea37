"""Product masks for background replacement, and pasting the product back.

A shop uploads a real product photo and asks for new backgrounds; the product
itself must come back unchanged, pixel for pixel. Diffusion inpainting cannot
promise that (the VAE round trip alters every pixel, masked or not), so the
promise is kept here instead: find the product, let the model repaint the
rest, then copy the product's pixels back from the upload.

Conventions, used by every function below:

- A *product mask* is mode "L": 255 where the product is (kept), 0 elsewhere.
- A *background mask* is its inverse: 255 where the model repaints. This is
  what diffusers' inpaint pipelines take as ``mask_image`` (white = repaint).
- Masks made here are strictly 0 or 255. Masks read here count a pixel as
  white when it is above ``MASK_THRESHOLD``, the same 0.5 cut diffusers'
  ``VaeImageProcessor(do_binarize=True)`` makes, so a soft mask means the same
  thing to this module and to the pipeline.
- Sizes are PIL's ``(width, height)``.

Only numpy, Pillow and OpenCV are imported: the UI previews a mask before
anything heavy is loaded. rembg is optional and imported only when used.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from pipelines import matting
from pipelines.limits import DEFAULT_MATTE_BAND, RequestError

MASK_METHODS = ("auto", "alpha", "grabcut", "rembg")
MASK_THRESHOLD = 127  # a mask pixel is white when above this

# An alpha channel marks the product where the pixel is more than half opaque.
# Binary rather than soft because paste-back copies product pixels verbatim:
# a faint fringe (alpha <= 127) is better repainted than pasted as a ghost.
ALPHA_THRESHOLD = 127

# GrabCut (Rother et al., "GrabCut", SIGGRAPH 2004) as OpenCV implements it.
GRABCUT_BORDER = 0.03  # the band of each side taken as sure background
GRABCUT_MIN_BORDER = 2  # pixels, so tiny images still have a background sample
GRABCUT_ITERATIONS = 5
GRABCUT_MAX_SIDE = 640  # estimate at this size; the graph cut is O(pixels)
GRABCUT_MIN_SIDE = 16
GRABCUT_SEED = 0  # GrabCut seeds its colour models with k-means, which is random
# Other pieces are kept when at least this fraction of the largest one, so a
# pair of earrings stays a pair while speckles of a noisy backdrop go.
KEEP_COMPONENT_FRACTION = 0.05

# rembg's default model, in the folder rembg itself reads (rembg/sessions/base.py).
REMBG_MODEL = "u2net"

OVERLAY_TINT = (255, 0, 255)  # magenta: rare in product photos, plain to see
OVERLAY_OPACITY = 0.5


# --- reading and writing masks ------------------------------------------------


def _white(mask: Image.Image) -> np.ndarray:
    """The mask as booleans: True where it is white."""
    return np.asarray(mask.convert("L")) > MASK_THRESHOLD


def _to_mask(white: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(white, 255, 0).astype(np.uint8), mode="L")


def invert(mask: Image.Image) -> Image.Image:
    """Swap kept and repainted: a product mask becomes a background mask."""
    return ImageOps.invert(mask.convert("L"))


def adjust(mask: Image.Image, grow: int) -> Image.Image:
    """Grow (``grow`` > 0) or shrink (< 0) the white region by ``grow`` pixels.

    A Euclidean distance transform gives the same result as dilation or
    erosion with a round kernel of that radius, in time that does not depend
    on the radius. The image edge is not a boundary: a region touching it
    does not shrink away from it.
    """
    if isinstance(grow, bool) or not isinstance(grow, int):
        raise TypeError(f"grow must be an int; got {type(grow).__name__}.")
    white = _white(mask)
    if grow == 0:
        return _to_mask(white)
    if grow > 0:
        # Distance from each black pixel to the nearest white one.
        distance = cv2.distanceTransform((~white).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return _to_mask(white | (distance <= grow))
    # Distance from each white pixel to the nearest black one.
    distance = cv2.distanceTransform(white.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return _to_mask(white & (distance > -grow))


def background_mask(product: Image.Image, *, grow: int = 0) -> Image.Image:
    """The region the model repaints: everything but the product.

    ``grow`` (the UI's "mask grow") moves the seam, measured on the
    background: a positive value lets the background eat ``grow`` pixels into
    the product's edge, which hides a halo of the old backdrop that a mask
    left on the product; a negative value keeps a margin of that many
    original pixels around the product, which is safer for fine edges (hair,
    fur, glass) at the price of some old backdrop showing.
    """
    return adjust(invert(product), grow)


# --- finding the product ------------------------------------------------------


def _alpha(image: Image.Image) -> np.ndarray | None:
    """The image's alpha channel, or None when it has no transparency at all."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    return np.asarray(image.convert("RGBA"))[..., 3]


def _has_cutout(image: Image.Image) -> bool:
    """Whether the alpha channel leaves something to repaint.

    An alpha channel that is everywhere more than half opaque would give a
    mask with no background, so it does not count as a cut-out.
    """
    alpha = _alpha(image)
    return alpha is not None and bool((alpha <= ALPHA_THRESHOLD).any())


def _alpha_mask(image: Image.Image) -> np.ndarray:
    if not _has_cutout(image):
        raise RequestError(
            "mask_method 'alpha' needs an image with transparent pixels around the product; "
            "this one has none, so choose 'grabcut' or 'auto'."
        )
    return _alpha(image) > ALPHA_THRESHOLD


def rembg_model_path() -> Path:
    """Where rembg keeps its default model's weights.

    The same lookup rembg makes: ``U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``,
    else ``~/.u2net``.
    """
    home = os.environ.get("U2NET_HOME") or os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net")
    return Path(home).expanduser() / f"{REMBG_MODEL}.onnx"


def rembg_problem() -> str | None:
    """Why rembg cannot run here, as one sentence, or None when it can.

    rembg downloads a missing model on first use; Atelier must run without a
    network, so it only uses weights that are already on disk.
    """
    if importlib.util.find_spec("rembg") is None or importlib.util.find_spec("onnxruntime") is None:
        return "mask_method 'rembg' needs the rembg package; install it with `pip install rembg[cpu]`, or choose 'grabcut'."
    path = rembg_model_path()
    if not path.is_file():
        return (
            f"mask_method 'rembg' needs the model file {path}, which is missing; "
            "put it there (or set U2NET_HOME to its folder), or choose 'grabcut'."
        )
    return None


def _rembg_mask(image: Image.Image) -> np.ndarray:
    problem = rembg_problem()
    if problem:
        raise RequestError(problem)
    # rembg re-checks the file's checksum and fetches it again on a mismatch;
    # with checksums off it uses the file that is there and never downloads.
    os.environ.setdefault("MODEL_CHECKSUM_DISABLED", "1")
    import rembg

    # A session per call: the model is 170 MB and the engine, not a module
    # global, is where long-lived models belong.
    session = rembg.new_session(REMBG_MODEL)
    soft = rembg.remove(image.convert("RGB"), session=session, only_mask=True)
    return np.asarray(soft.convert("L")) > MASK_THRESHOLD


def _border_band(height: int, width: int) -> tuple[int, int]:
    return (
        max(GRABCUT_MIN_BORDER, round(height * GRABCUT_BORDER)),
        max(GRABCUT_MIN_BORDER, round(width * GRABCUT_BORDER)),
    )


def _keep_large_components(white: np.ndarray) -> np.ndarray:
    """Drop specks: keep the largest piece and any piece comparable to it."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(white.astype(np.uint8), connectivity=8)
    if count <= 1:
        return white
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= KEEP_COMPONENT_FRACTION * areas.max()) + 1
    return np.isin(labels, keep)


def _fill_holes(white: np.ndarray) -> np.ndarray:
    """Make black pockets enclosed by the product part of it.

    GrabCut often gives away a product's light details (a white logo, a
    highlight) because they look like the backdrop. The cost: a see-through
    gap such as a mug's handle keeps the old backdrop; paint it by hand.
    """
    count, labels = cv2.connectedComponents((~white).astype(np.uint8), connectivity=4)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    enclosed = np.setdiff1d(np.arange(1, count), edge)
    return white | np.isin(labels, enclosed)


def _grabcut_mask(image: Image.Image) -> np.ndarray:
    """A classical foreground estimate for a product on a plain backdrop.

    The border band is sure background and everything inside it probable
    foreground; GrabCut then learns both colour models and cuts. This needs no
    weights, is deterministic (fixed k-means seed) and suits studio shots; a
    product that runs off the frame loses the part inside the band.
    """
    width, height = image.size
    if min(width, height) < GRABCUT_MIN_SIDE:
        raise RequestError(
            f"image must be at least {GRABCUT_MIN_SIDE} pixels on each side for mask_method 'grabcut'; "
            f"got {width}x{height}."
        )
    # 1. Work on a copy at most GRABCUT_MAX_SIDE wide or high.
    scale = min(1.0, GRABCUT_MAX_SIDE / max(width, height))
    small = image.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    pixels = np.ascontiguousarray(np.asarray(small))
    # 2. Sure background on the border band, probable foreground inside.
    labels = np.full(pixels.shape[:2], cv2.GC_PR_FGD, np.uint8)
    band_y, band_x = _border_band(*labels.shape)
    labels[:band_y], labels[-band_y:] = cv2.GC_BGD, cv2.GC_BGD
    labels[:, :band_x], labels[:, -band_x:] = cv2.GC_BGD, cv2.GC_BGD
    # 3. Cut.
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(GRABCUT_SEED)
    cv2.grabCut(pixels, labels, None, background_model, foreground_model, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    white = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    # 4. Clean up, then bring back to full size.
    white = _fill_holes(_keep_large_components(white))
    if not white.any():
        raise RequestError(
            "mask_method 'grabcut' found no product in this image; "
            "paint the product by hand or upload a PNG with a transparent background."
        )
    if scale < 1.0:
        full = cv2.resize(white.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR)
        white = full > MASK_THRESHOLD
    # 5. Move the edge to the product's true (half-covered) edge: GrabCut keeps the
    #    anti-aliased ring as product, and a mask cut at a smaller size is off by its scale.
    band = max(DEFAULT_MATTE_BAND, math.ceil(2 / scale))
    return matting.refine(image, white, band)


_METHODS = {"alpha": _alpha_mask, "grabcut": _grabcut_mask, "rembg": _rembg_mask}


def _auto_method(image: Image.Image) -> str:
    """The method "auto" picks for this image, in the product team's order of preference.

    The image's own cut-out first, since it is what the shop made; then
    GrabCut, which needs no weights and always runs. The learned remover
    (rembg) is one choice away in the tab, and used only when asked for:
    a learned mask on some machines and not others would make the same
    request give different masks.
    """
    if _has_cutout(image):
        return "alpha"
    return "grabcut"


def product_mask(image: Image.Image, method: str = "auto") -> tuple[Image.Image, str]:
    """The product's mask (255 = keep) and the method that made it.

    The method used is returned so it can be recorded with the generation:
    "auto" may pick differently on a machine where rembg is installed.
    """
    if method not in MASK_METHODS:
        raise RequestError(f"mask_method must be one of {', '.join(MASK_METHODS)}; got {method!r}.")
    used = _auto_method(image) if method == "auto" else method
    return _to_mask(_METHODS[used](image)), used


# --- after generation ---------------------------------------------------------


def product_matte(image: Image.Image, background: Image.Image, *, grow: int, band: int) -> matting.Matte:
    """The product's matte from the background mask (grown or shrunk first, as the run does)."""
    return matting.matte_of(image, ~_white(adjust(background, grow)), band)


def _seam_weights(region: np.ndarray, feather: int) -> np.ndarray:
    """How much of the generated image each pixel takes, from 0 to 1.

    0 outside the repainted region; inside it, pixels at most ``feather``
    from the nearest kept pixel ramp up as distance / (feather + 1), and
    every pixel further out is 1 (the generated pixel, untouched). The blend
    never reaches a product pixel.
    """
    if feather == 0 or region.all():
        return region.astype(np.float32)
    distance = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(distance > feather, 1.0, distance / (feather + 1)).astype(np.float32)


def _seen_original(original: Image.Image, generated: np.ndarray) -> np.ndarray:
    """The original as a viewer sees it over the new background.

    Colours under transparent pixels are arbitrary (often black), so an image
    with alpha is composited over the generated image first; otherwise the
    feather would blend towards a dark fringe.
    """
    alpha = _alpha(original)
    rgb = np.asarray(original.convert("RGB"), dtype=np.float32)
    if alpha is None:
        return rgb
    opacity = alpha[..., None].astype(np.float32) / 255.0
    return rgb * opacity + generated * (1.0 - opacity)


def paste_back(original: Image.Image, generated: Image.Image, background: Image.Image, *, feather: int) -> Image.Image:
    """The generated image with every kept pixel copied back from the original.

    Where ``background`` is black (at or below ``MASK_THRESHOLD``) the output
    is the original's RGB, bit for bit, chosen with ``np.where`` rather than
    blended, so exactness does not depend on rounding. An RGBA original gives
    an RGB output whose kept pixels are the original's RGB (alpha dropped,
    not composited). ``feather`` softens the seam inside the repainted region
    only. ``generated`` may differ in size (models work in multiples of 8);
    it is resized to the original's size with Lanczos first.
    """
    # 1. Check inputs
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise RequestError(f"feather must be a whole number of pixels, 0 or more; got {feather!r}.")
    if background.size != original.size:
        raise ValueError(f"background mask is {background.size}, the original {original.size}; they must match.")
    # 2. Bring the generated image to the original's size
    generated = generated.convert("RGB")
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    new = np.asarray(generated, dtype=np.float32)
    # 3. Feather inside the repainted region, then copy the kept pixels exactly
    region = _white(background)
    weight = _seam_weights(region, feather)[..., None]
    blended = np.rint(new * weight + _seen_original(original, new) * (1.0 - weight))
    kept = np.asarray(original.convert("RGB"))
    out = np.where(region[..., None], np.clip(blended, 0, 255).astype(np.uint8), kept)
    return Image.fromarray(out, mode="RGB")


# --- the editor and previews --------------------------------------------------


def _painted(layer: Any) -> np.ndarray:
    """True where a gr.ImageEditor layer has paint.

    A layer is a numpy array, a PIL image or a file path, depending on the
    component's ``type``. With an alpha channel, paint is alpha > 0. Without
    one (``image_mode`` "RGB" or "L" drops a layer's alpha), the canvas has
    exported unpainted pixels as 0, so paint is any non-zero channel.
    """
    if isinstance(layer, (str, os.PathLike)):
        with Image.open(layer) as opened:
            layer = opened.copy()
    if isinstance(layer, Image.Image):
        if "A" in layer.getbands() or "transparency" in layer.info:
            return np.asarray(layer.convert("RGBA"))[..., 3] > 0
        layer = np.asarray(layer)
    pixels = np.asarray(layer)
    if pixels.ndim == 2:
        return pixels > 0
    if pixels.shape[2] in (2, 4):
        return pixels[..., -1] > 0
    return (pixels > 0).any(axis=2)


def mask_from_editor(value: dict[str, Any] | None, size: tuple[int, int]) -> Image.Image | None:
    """A mask of ``size`` that is white where the user painted in any layer.

    ``value`` is what gr.ImageEditor passes a handler: a dict with
    "background", "layers" and "composite". None when there is no value or no
    stroke, so the caller can tell "not painted" from "painted nothing".
    Layers are the canvas's size; one of another size is scaled to ``size``
    (nearest neighbour, so the mask stays 0/255).
    """
    if not value or not value.get("layers"):
        return None
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in value["layers"]:
        if layer is None:
            continue
        strokes = _painted(layer)
        if strokes.shape != painted.shape:
            strokes = cv2.resize(strokes.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        painted |= strokes
    return _to_mask(painted) if painted.any() else None


def mask_to_image(mask: Image.Image) -> Image.Image:
    """The mask as an RGB picture (white = white pixels) for an image widget."""
    return _to_mask(_white(mask)).convert("RGB")


def overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The photo with the mask's white pixels tinted magenta.

    Pass the background mask to show what the model will repaint: what is
    left untinted comes back exactly as uploaded.
    """
    if mask.size != image.size:
        raise ValueError(f"mask is {mask.size}, the image {image.size}; they must match.")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.array(OVERLAY_TINT, dtype=np.float32)
    tinted = np.rint(rgb * (1.0 - OVERLAY_OPACITY) + tint * OVERLAY_OPACITY).astype(np.uint8)
    out = np.where(_white(mask)[..., None], tinted, rgb.astype(np.uint8))
    return Image.fromarray(out, mode="RGB")
