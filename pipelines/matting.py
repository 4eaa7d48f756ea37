"""Soft product edges: a trimap from the mask, alpha and the product's own colour in its band, the composite.

A product mask is binary, but a photographed edge is not: its anti-aliased
pixels are part product, part old backdrop. Pasting them back verbatim puts
a ring of the old backdrop on the new one (issue 20: a white outline on a
purple background). Here the mask's edge becomes an *unknown band* of
``band`` pixels on each side (the trimap); in it each pixel gets an opacity
(alpha) and the product's colour with the old backdrop taken out, and only
those pixels are composited again over the generated background. Pixels
inside the band's inner edge are the photo's, bit for bit; pixels outside
its outer edge are the generated image's.

The estimate is the colour-line model behind closed-form matting (Levin,
Lischinski and Weiss, "A Closed-Form Solution to Natural Image Matting",
PAMI 2008), solved locally: near an edge an image is a blend of one
foreground and one background colour, so each band pixel's alpha is its
position on the line between the nearest sure background's colour and the
nearest sure product's colour. Product photos are shot on plain or graded
studio backdrops, where that line is well defined and the global Laplacian
solve (pymatting's ``estimate_alpha_cf``) buys little; pymatting was
measured instead (its numba kernels cost 43 s of compilation on the first
import in a fresh environment, every Ray replica and every CI run, against
a generation of about a second), so this module keeps to numpy and OpenCV.

A photo with transparency already carries its matte: its alpha channel is
used as it is, and its RGB as the product's colour.

Images are float32 RGB in 0..255 inside; alpha is float32 in 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from pipelines import shadows
from pipelines.limits import MAX_MATTE_BAND as MAX_BAND

# Below this colour distance (0..255 RGB) between the product and the backdrop beside it,
# an edge pixel's position on the line between them is noise; the mask's own edge is kept there.
MIN_CONTRAST = 24.0
# Alpha this close to 0 or 1 is taken as exactly 0 or 1: sensor noise on a plain backdrop
# would otherwise leave a faint veil of the product's colour over the new background.
SNAP = 0.04
# Below this alpha the product's colour is taken from the sure product nearby rather than
# solved from the pixel, where dividing by a small alpha would magnify noise.
MIN_SOLVE_ALPHA = 0.3
# How far (in pixels) the local backdrop and product colours average, against sensor noise;
# the product's is tried at several reaches, nearest first.
COLOUR_SIGMA = 1.5
FRONT_SIGMAS = (0.7, 1.5, 3.0)


@dataclass(frozen=True, eq=False)
class Matte:
    """A product's opacity and colour, the size of its photo.

    ``alpha`` is exactly 1 where the photo's pixel is kept bit for bit and
    exactly 0 where the new background shows unmixed; ``foreground`` is the
    product's colour with the old backdrop removed (meaningful where alpha > 0).
    """

    alpha: np.ndarray  # float32, H x W, 0..1
    foreground: np.ndarray  # float32, H x W x 3, 0..255

    @property
    def kept(self) -> np.ndarray:
        """Where the photo's pixel comes back unchanged."""
        return self.alpha >= 1.0

    @property
    def regenerated(self) -> np.ndarray:
        """Where the model must paint: everywhere the new background shows, even a little."""
        return self.alpha < 1.0

    def mask(self) -> Image.Image:
        """The matte as a greyscale picture (255 = product), for previews and cut-outs."""
        return Image.fromarray(np.rint(self.alpha * 255).astype(np.uint8), mode="L")


def check_band(band: int) -> int:
    if isinstance(band, bool) or not isinstance(band, int) or not 1 <= band <= MAX_BAND:
        raise ValueError(f"band must be a whole number of pixels from 1 to {MAX_BAND}; got {band!r}.")
    return band


def trimap(product: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sure product, sure background, unknown) from a binary product mask.

    The unknown band is every pixel within ``band`` pixels of the mask's edge,
    on either side. The image's own edge is not an edge of the mask, as in
    ``masks.adjust``.
    """
    check_band(band)
    inside = cv2.distanceTransform(product.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~product).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    sure_product = inside > band
    sure_background = outside > band
    return sure_product, sure_background, ~(sure_product | sure_background)


def _nearby_colour(rgb: np.ndarray, sure: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Each pixel's nearby colour of the ``sure`` region, at the pixels of ``where``.

    A normalised convolution (a Gaussian average over sure pixels only)
    smooths sensor noise; band pixels it does not reach take the nearest
    sure pixel's average, found by OpenCV's distance transform with labels.
    """
    weight = cv2.GaussianBlur(sure.astype(np.float32), (0, 0), sigma)
    total = cv2.GaussianBlur(rgb * sure[..., None], (0, 0), sigma)
    reached = weight > 1e-3
    average = total / np.maximum(weight, 1e-3)[..., None]
    # Labels of the nearest reached pixel (DIST_LABEL_PIXEL: one label per zero pixel).
    _, labels = cv2.distanceTransformWithLabels(
        (~reached).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    ys, xs = np.nonzero(reached)  # OpenCV numbers the zero pixels 1, 2, ... in row-major order
    nearest = np.zeros((labels.max() + 1, 3), np.float32)
    nearest[1:] = average[ys, xs]
    return nearest[labels[where]]


def _on_line(pixels: np.ndarray, back: np.ndarray, front: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, residual, contrast) of each pixel as a blend of ``back`` and ``front``."""
    line = front - back
    length = np.einsum("ij,ij->i", line, line)
    alpha = np.clip(np.einsum("ij,ij->i", pixels - back, line) / np.maximum(length, 1e-6), 0.0, 1.0)
    residual = np.linalg.norm(pixels - back - alpha[:, None] * line, axis=1)
    return alpha, residual, np.sqrt(length)


def estimate(image: Image.Image, product: np.ndarray, band: int) -> Matte:
    """The matte of an opaque photo from its binary product mask (True = product)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    sure_product, sure_background, unknown = trimap(product, band)
    alpha = sure_product.astype(np.float32)
    foreground = rgb.copy()
    if not unknown.any() or not sure_product.any() or not sure_background.any():
        # Nothing on one side to learn a colour from: the mask's own edge stands.
        return Matte(alpha=product.astype(np.float32), foreground=foreground)
    # 1. The backdrop's colour beside each band pixel, and candidates for the product's: a product
    #    has labels and highlights near its edge, so a wide average can mix two of its colours;
    #    each pixel takes the candidate that explains it best (as in Wang and Cohen's "Robust
    #    Matting", CVPR 2007, which picks among sampled pairs by the same residual).
    pixels = rgb[unknown]
    back = _nearby_colour(rgb, sure_background, unknown, COLOUR_SIGMA)
    best = None
    for sigma in FRONT_SIGMAS:
        front = _nearby_colour(rgb, sure_product, unknown, sigma)
        candidate = (*_on_line(pixels, back, front), front)
        if best is None:
            best = candidate
            continue
        better = candidate[1] < best[1]
        best = tuple(
            np.where(better[:, None] if part.ndim == 2 else better, part, old)
            for part, old in zip(candidate, best, strict=True)
        )
    band_alpha, _, contrast, front = best
    # 2. Alpha: the pixel's position on the line from backdrop to product
    flat = contrast < MIN_CONTRAST
    band_alpha[flat] = product[unknown][flat]
    band_alpha[band_alpha <= SNAP] = 0.0
    band_alpha[band_alpha >= 1.0 - SNAP] = 1.0
    # 3. The product's own colour: the pixel with the backdrop's share taken out
    solved = (pixels - (1.0 - band_alpha[:, None]) * back) / np.maximum(band_alpha, MIN_SOLVE_ALPHA)[:, None]
    colour = np.where((band_alpha >= MIN_SOLVE_ALPHA)[:, None], np.clip(solved, 0, 255), front)
    colour[band_alpha >= 1.0] = pixels[band_alpha >= 1.0]
    alpha[unknown] = band_alpha
    foreground[unknown] = colour
    return Matte(alpha=alpha, foreground=foreground)


def from_alpha(image: Image.Image, product: np.ndarray, band: int) -> Matte:
    """The matte of a cut-out: its own alpha, cleared where the mask says sure background.

    ``product`` is the (possibly edited) product mask; the alpha is kept
    within ``band`` of it, so a faint fringe beside the product stays soft
    while strokes painted far from it still clear the pixels under them.
    """
    rgba = np.asarray(image.convert("RGBA"))
    _, sure_background, _ = trimap(product, band)
    alpha = np.where(sure_background, 0.0, rgba[..., 3] / 255.0).astype(np.float32)
    return Matte(alpha=alpha, foreground=rgba[..., :3].astype(np.float32))


def has_transparency(image: Image.Image) -> bool:
    if "A" not in image.getbands() and "transparency" not in image.info:
        return False
    return bool((np.asarray(image.convert("RGBA"))[..., 3] < 255).any())


def matte_of(image: Image.Image, product: np.ndarray, band: int) -> Matte:
    """The photo's matte: its alpha channel when it has transparency, else estimated in the band."""
    if has_transparency(image):
        return from_alpha(image, product, band)
    return estimate(image, product, band)


def refine(image: Image.Image, product: np.ndarray, band: int) -> np.ndarray:
    """The binary mask moved to the product's true edge: where the estimated alpha is over one half.

    A colour-model cut (GrabCut) counts every anti-aliased edge pixel as
    product, since it is darker than the backdrop, and a mask found at a
    smaller size and scaled up is a pixel or two off; both leave a ring of
    old backdrop. The half-covered contour is where a retoucher's path runs.
    """
    matte = estimate(image, product, band)
    return matte.alpha > 0.5


def over(
    original: Image.Image, generated: Image.Image, matte: Matte, shadow: shadows.Shadow | None = None
) -> Image.Image:
    """The product over a generated image, with its shadow drawn on the background first.

    ``generated`` may differ in size (models work in multiples of 8); it is
    resized to the original's with Lanczos, as ``masks.paste_back`` does.
    """
    generated = generated.convert("RGB")
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    background = np.asarray(generated)
    if shadow is not None:
        background = shadows.cast(background, matte.alpha, shadow)
    return composite(original, background, matte)


def composite(original: Image.Image, background: np.ndarray, matte: Matte) -> Image.Image:
    """The product over ``background`` (H x W x 3, 0..255) with the matte.

    Where alpha is 1 the output is the original's RGB bit for bit (chosen
    with ``np.where``, not blended); where it is 0, the background's pixel.
    """
    kept = np.asarray(original.convert("RGB"))
    alpha = matte.alpha[..., None]
    blended = np.rint(matte.foreground * alpha + background.astype(np.float32) * (1.0 - alpha))
    out = np.where(matte.kept[..., None], kept, np.clip(blended, 0, 255).astype(np.uint8))
    return Image.fromarray(out, mode="RGB")
