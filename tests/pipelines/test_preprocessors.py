"""ControlNet preprocessors: what a user checks in the control image.

Weight-free detectors run for real; weighted ones are checked against an
empty (or hand-filled) Hugging Face cache in a temporary folder, so the result
does not depend on what this machine has downloaded.
"""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import preprocessors
from pipelines.preprocessors import ANNOTATORS, PREPROCESSORS, availability, available, check_params, run
from pipelines.requests import RequestError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """Every test sees an empty Hugging Face cache of its own."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


def put_in_cache(hub: Path, repo: str, *files: str) -> None:
    """Lay files out the way huggingface_hub caches a download of ``repo``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name in files:
        path = repo_dir / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really weights")


def red_circle_on_blue(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 255))
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(255, 0, 0))
    return image


def dark_disc_on_white(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """A drawing to ink, and a boolean map of the pixels near its outline."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    ImageDraw.Draw(image).ellipse(box, fill=(60, 60, 60))
    inside = (np.asarray(image)[:, :, 0] < 128).astype(np.uint8)
    kernel = np.ones((7, 7), np.uint8)
    near = cv2.dilate(inside, kernel).astype(bool) & ~cv2.erode(inside, kernel).astype(bool)
    return image, near


def banded_gradient(width: int = 128, height: int = 64) -> Image.Image:
    """Vertical bands whose steps grow in contrast (10, 20, 30, 40, 50, 105),
    so each higher threshold keeps fewer of the band edges."""
    levels = [0, 10, 30, 60, 100, 150, 255]
    columns = np.array([levels[x * len(levels) // width] for x in range(width)], np.uint8)
    gray = np.tile(columns, (height, 1))
    return Image.fromarray(np.stack([gray] * 3, axis=2))


# --- canny -------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (50, 70)])
def test_canny_is_cv2_canny_at_the_input_size(size):
    image = red_circle_on_blue(*size)
    expected = cv2.Canny(np.array(image.convert("RGB")), 100, 200)

    control = run("canny", image)

    assert control.mode == "RGB"
    assert control.size == image.size
    pixels = np.asarray(control)
    assert expected.any(), "the drawing should have edges to find"
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], expected)


def test_canny_of_a_grayscale_upload_uses_its_rgb_pixels():
    image = red_circle_on_blue(64, 64).convert("L")
    control = run("canny", image, low_threshold=50, high_threshold=150)
    assert control.mode == "RGB" and control.size == (64, 64)
    expected = cv2.Canny(np.array(image.convert("RGB")), 50, 150)
    np.testing.assert_array_equal(np.asarray(control)[:, :, 1], expected)


def test_higher_canny_thresholds_keep_fewer_edges():
    image = banded_gradient()
    counts = [
        int((np.asarray(run("canny", image, low_threshold=low, high_threshold=high))[:, :, 0] > 0).sum())
        for low, high in [(20, 40), (50, 100), (90, 180), (200, 255)]
    ]
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0


# --- lineart_standard -------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_lineart_standard_inks_the_outline(size):
    image, near_outline = dark_disc_on_white(*size)

    control = run("lineart_standard", image)

    assert control.mode == "RGB"
    assert control.size == image.size
    ink = np.asarray(control)[:, :, 0].astype(float)
    # Ink fades inward from the outline (the detector compares each pixel
    # with a blur of width gaussian_sigma), so compare, not demand zero.
    assert ink[near_outline].mean() > 4 * ink[~near_outline].mean()
    assert ink[near_outline].mean() > 40
    width, height = size
    assert ink[:8, :8].max() == 0, "flat paper stays blank"
    assert ink[height // 2, width // 2] < ink[near_outline].mean() / 4, "flat fill gets little ink"


def test_lineart_standard_at_a_multiple_of_64_is_controlnet_aux_unchanged():
    from controlnet_aux import LineartStandardDetector

    image, _ = dark_disc_on_white(128, 64)
    expected = LineartStandardDetector()(np.array(image), detect_resolution=64, output_type="np")

    np.testing.assert_array_equal(np.asarray(run("lineart_standard", image)), expected)


def test_lineart_standard_does_not_resample_an_odd_size():
    """A 96x64 page is inked exactly like the same lines on a 128x64 page:
    controlnet_aux alone would stretch 96 to 128 and back, blurring thin lines."""

    def page(width):
        image = Image.new("RGB", (width, 64), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        draw.line((30, 5, 30, 58), fill=(0, 0, 0))
        draw.line((10, 20, 60, 20), fill=(0, 0, 0))
        return image

    narrow = np.asarray(run("lineart_standard", page(96)))
    wide = np.asarray(run("lineart_standard", page(128)))

    assert narrow.shape == (64, 96, 3)
    assert narrow[:, 30].max() > 100
    np.testing.assert_array_equal(narrow, wide[:, :96])


def test_lineart_standard_sigma_changes_the_lines():
    image, _ = dark_disc_on_white(64, 64)
    thin = np.asarray(run("lineart_standard", image, gaussian_sigma=1.0))
    wide = np.asarray(run("lineart_standard", image, gaussian_sigma=6.0))
    assert (thin > 0).sum() < (wide > 0).sum()


# --- shuffle -----------------------------------------------------------------


def test_shuffle_is_reproducible_from_its_seed():
    image = red_circle_on_blue(96, 64)

    first = np.asarray(run("shuffle", image, seed=7))
    again = np.asarray(run("shuffle", image, seed=7))
    other = np.asarray(run("shuffle", image, seed=8))

    assert first.shape == (64, 96, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_shuffle_leaves_numpys_global_random_stream_alone():
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    run("shuffle", red_circle_on_blue(64, 64), seed=123)
    np.testing.assert_array_equal(np.random.rand(3), expected)


# --- none --------------------------------------------------------------------


def test_none_passes_the_image_through():
    image = red_circle_on_blue(96, 64)
    control = run("none", image)
    assert control.mode == "RGB" and control.size == image.size
    np.testing.assert_array_equal(np.asarray(control), np.asarray(image))


# --- weighted preprocessors and the cache ------------------------------------


@pytest.mark.parametrize("name", ["depth_midas", "openpose", "hed", "lineart"])
def test_weighted_preprocessor_is_unavailable_with_an_empty_cache(name):
    ok, reason = availability(name)

    assert not ok
    assert ANNOTATORS in reason  # the hub repository the weights come from
    for filename in PREPROCESSORS[name].weights.files:
        assert filename in reason
    with pytest.raises(RequestError) as raised:
        run(name, red_circle_on_blue(64, 64))
    assert str(raised.value) == reason


def test_cached_weights_make_a_preprocessor_available(empty_hf_cache):
    put_in_cache(empty_hf_cache, ANNOTATORS, "dpt_hybrid-midas-501f0c75.pt")
    assert availability("depth_midas") == (True, "")
    assert not availability("normal_bae")[0]


def test_reason_names_only_the_missing_files(tmp_path, monkeypatch):
    hub = tmp_path / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    put_in_cache(hub, ANNOTATORS, "body_pose_model.pth")

    ok, reason = availability("openpose")

    assert not ok
    assert "hand_pose_model.pth" in reason and "facenet.pth" in reason
    assert "body_pose_model.pth" not in reason
    assert str(hub) in reason


def test_available_lists_every_preprocessor_for_the_dropdown():
    listing = available()

    assert [name for name, _, _ in listing] == list(PREPROCESSORS)
    status = {name: (ok, reason) for name, ok, reason in listing}
    for name in ("none", "canny", "lineart_standard", "shuffle"):
        assert status[name] == (True, "")
    for name, entry in PREPROCESSORS.items():
        if entry.weights is not None:
            ok, reason = status[name]
            assert not ok and entry.weights.repo in reason


def test_mediapipe_face_says_which_package_is_missing(monkeypatch):
    real = preprocessors.importlib.util.find_spec
    monkeypatch.setattr(
        preprocessors.importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "mediapipe" else real(name, *a, **k),
    )
    ok, reason = availability("mediapipe_face")
    assert not ok and "pip install mediapipe" in reason


def test_a_detector_is_loaded_once(monkeypatch):
    loads = []
    real_load = preprocessors._load
    monkeypatch.setattr(preprocessors, "_DETECTORS", {})
    monkeypatch.setattr(preprocessors, "_load", lambda entry: loads.append(entry.name) or real_load(entry))

    image, _ = dark_disc_on_white(64, 64)
    run("lineart_standard", image)
    run("lineart_standard", image, gaussian_sigma=3.0)

    assert loads == ["lineart_standard"]


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("canny", {"low_threshold": 300}, "low_threshold"),
        ("canny", {"high_threshold": 0}, "high_threshold"),
        ("canny", {"low_threshold": 10.5}, "low_threshold"),
        ("canny", {"low_threshold": "100"}, "low_threshold"),
        ("canny", {"low_threshold": True}, "low_threshold"),
        ("canny", {"low_threshold": 150, "high_threshold": 100}, "low_threshold"),
        ("canny", {"threshold": 100}, "threshold"),
        ("shuffle", {"seed": -1}, "seed"),
        ("lineart_standard", {"gaussian_sigma": 0.0}, "gaussian_sigma"),
        ("lineart_standard", {"gaussian_sigma": float("nan")}, "gaussian_sigma"),
        ("none", {"seed": 1}, "seed"),
    ],
)
def test_bad_params_are_refused_by_name(name, params, named):
    with pytest.raises(RequestError, match=named) as raised:
        run(name, red_circle_on_blue(64, 64), **params)
    message = str(raised.value)
    assert message.endswith(".") and message.count(". ") == 0


def test_whole_number_floats_are_accepted_as_ints():
    assert check_params("canny", low_threshold=50.0, high_threshold=150) == {"low_threshold": 50, "high_threshold": 150}


def test_unknown_preprocessor_lists_the_allowed_names():
    with pytest.raises(RequestError) as raised:
        run("sobel", red_circle_on_blue(64, 64))
    message = str(raised.value)
    assert "sobel" in message
    for name in PREPROCESSORS:
        assert name in message


def test_importing_the_module_loads_neither_torch_nor_controlnet_aux():
    code = (
        "import sys, pipelines.preprocessors as p; p.available(); "
        "print(sorted(m for m in ('torch', 'controlnet_aux', 'cv2') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
