"""ControlNet preprocessors: turn an uploaded picture into a control image.

Built on ``controlnet_aux``. What this module hides:
- which detectors need annotator weights, where they live on the Hugging Face
  hub, and whether they are already in the local cache (nothing here ever
  downloads: weighted detectors load from the cached snapshot folder);
- each detector's resizing habits: controlnet_aux snaps every image to a
  multiple of 64 at ``detect_resolution``; here the control image always comes
  back at exactly the input's size;
- one clear ``RequestError`` for an unknown name, a bad parameter or missing
  weights.

Importing this module is cheap (no torch, no controlnet_aux, no OpenCV), so
the UI can build its dropdown from ``available()`` before anything heavy loads.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from pipelines.limits import SEED_RANGE_32, RequestError, names_of

ANNOTATORS = "lllyasviel/Annotators"


@dataclass(frozen=True)
class Param:
    """One detector parameter: its default and the range a user may choose from.

    ``kind`` is "int", "float" or "bool"; a bool has no range.
    """

    default: int | float | bool
    min: int | float | None = None
    max: int | float | None = None
    kind: str = "int"


@dataclass(frozen=True)
class Weights:
    """Annotator weights a detector reads: files of one hub repo."""

    repo: str
    files: tuple[str, ...]


# (detector or None, RGB uint8 array, checked params) -> HxW or HxWx3 uint8 array
Apply = Callable[[Any, np.ndarray, dict[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    """A registry entry: what the user picks, what it needs, and how it runs.

    ``detector`` is the controlnet_aux class name (None where no detector
    object is needed); ``packages`` are extra Python modules it imports.
    """

    name: str
    label: str
    params: Mapping[str, Param]
    apply: Apply = field(repr=False, compare=False)
    detector: str | None = None
    weights: Weights | None = None
    packages: tuple[str, ...] = ()


# --- how each preprocessor runs --------------------------------------------


def _passthrough(_detector: Any, rgb: np.ndarray, _params: dict[str, Any]) -> np.ndarray:
    return rgb


def _canny(_detector: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """cv2.Canny on the RGB pixels at their own size.

    This is CannyDetector's own computation without its resize_image step,
    which snaps sizes to multiples of 64 at 512 px: the embedded model's
    ControlNet was trained on exactly ``cv2.Canny(rgb_uint8, 100, 200)`` at the
    image's size, so any resampling would feed it edges it never saw.
    """
    import cv2

    return cv2.Canny(rgb, params["low_threshold"], params["high_threshold"])


def _at_native_scale(detect: Callable[[np.ndarray, int], np.ndarray], rgb: np.ndarray) -> np.ndarray:
    """Run a detector at the image's own pixel scale, then crop to its size.

    controlnet_aux's resize_image scales the short side to the resolution and
    rounds both sides to multiples of 64, so no resolution keeps e.g. 96x64 as
    it is. Padding (mirrored) to the next multiples of 64 and asking for the
    padded short side makes that resize a no-op; the crop removes the padding.
    """
    import cv2

    height, width = rgb.shape[:2]
    pad_bottom, pad_right = -height % 64, -width % 64
    padded = cv2.copyMakeBorder(rgb, 0, pad_bottom, 0, pad_right, cv2.BORDER_REFLECT_101)
    out = detect(padded, min(padded.shape[:2]))
    return out[:height, :width]


def _lineart_standard(detector: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    return _at_native_scale(
        lambda image, resolution: detector(
            image,
            guassian_sigma=params["gaussian_sigma"],  # controlnet_aux's spelling
            intensity_threshold=params["intensity_threshold"],
            detect_resolution=resolution,
            output_type="np",
        ),
        rgb,
    )


_NUMPY_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block, then put its old state back.

    ContentShuffleDetector draws its flow field from ``np.random.uniform``
    (controlnet_aux/util.py ``make_noise_disk``) and takes no generator, so a
    seed can only reach it through the global state. The lock keeps two
    shuffles from interleaving; other code that draws from the global RNG on
    another thread at the same moment could still perturb a result.
    """
    with _NUMPY_RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _shuffle(detector: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    with _numpy_global_seed(params["seed"]):
        return _at_native_scale(
            lambda image, resolution: detector(
                image, detect_resolution=resolution, image_resolution=resolution, output_type="np"
            ),
            rgb,
        )


def _neural(detector: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Detectors whose models want ``detect_resolution`` (they were trained near
    512 px). Asking for the same ``image_resolution`` stops a second resize in
    controlnet_aux; ``run`` brings the map back to the input's size once."""
    return detector(rgb, **params, image_resolution=params["detect_resolution"], output_type="np")


def _neural_own_size(detector: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """TEED resizes back to the input itself and takes no image_resolution."""
    return detector(rgb, **params, output_type="np")


def _anyline(detector: Any, rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    return detector(
        rgb,
        detect_resolution=params["detect_resolution"],
        guassian_sigma=params["gaussian_sigma"],  # controlnet_aux's spelling
        intensity_threshold=params["intensity_threshold"],
        output_type="np",
    )


# --- the registry ------------------------------------------------------------


def _params(**params: Param) -> Mapping[str, Param]:
    return MappingProxyType(params)


def _resolution(default: int = 512) -> Param:
    return Param(default, 64, 2048)


def _flag(default: bool) -> Param:
    return Param(default, kind="bool")


def _annotators(*files: str) -> Weights:
    return Weights(ANNOTATORS, files)


_ENTRIES = (
    Preprocessor("none", "None (the image is the control image)", _params(), _passthrough),
    Preprocessor(
        "canny",
        "Canny edges",
        _params(low_threshold=Param(100, 1, 255), high_threshold=Param(200, 1, 255)),
        _canny,
    ),
    Preprocessor(
        "lineart_standard",
        "Line art (standard, no model)",
        _params(gaussian_sigma=Param(6.0, 0.5, 20.0, "float"), intensity_threshold=Param(8, 0, 255)),
        _lineart_standard,
        "LineartStandardDetector",
    ),
    # numpy's global seed (what the detector draws from) takes 32 bits only.
    Preprocessor(
        "shuffle", "Content shuffle", _params(seed=Param(0, 0, SEED_RANGE_32 - 1)), _shuffle, "ContentShuffleDetector"
    ),
    Preprocessor(
        "depth_midas",
        "Depth (MiDaS)",
        _params(detect_resolution=_resolution()),
        _neural,
        "MidasDetector",
        _annotators("dpt_hybrid-midas-501f0c75.pt"),
    ),
    Preprocessor(
        "depth_zoe",
        "Depth (ZoeDepth)",
        _params(detect_resolution=_resolution(), gamma_corrected=_flag(False)),
        _neural,
        "ZoeDetector",
        _annotators("ZoeD_M12_N.pt"),
    ),
    Preprocessor(
        "depth_leres",
        "Depth (LeReS)",
        _params(
            detect_resolution=_resolution(),
            thr_a=Param(0, 0, 100),  # remove near, percent
            thr_b=Param(0, 0, 100),  # remove background, percent
            boost=_flag(False),
        ),
        _neural,
        "LeresDetector",
        _annotators("res101.pth", "latest_net_G.pth"),
    ),
    Preprocessor(
        "normal_bae",
        "Normal map (BAE)",
        _params(detect_resolution=_resolution()),
        _neural,
        "NormalBaeDetector",
        _annotators("scannet.pt"),
    ),
    Preprocessor(
        "openpose",
        "Pose (OpenPose)",
        _params(
            detect_resolution=_resolution(),
            include_body=_flag(True),
            include_hand=_flag(False),
            include_face=_flag(False),
        ),
        _neural,
        "OpenposeDetector",
        _annotators("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    ),
    Preprocessor(
        "hed",
        "Soft edge (HED)",
        _params(detect_resolution=_resolution(), safe=_flag(False), scribble=_flag(False)),
        _neural,
        "HEDdetector",
        _annotators("ControlNetHED.pth"),
    ),
    Preprocessor(
        "pidi",
        "Soft edge (PiDiNet)",
        _params(detect_resolution=_resolution(), safe=_flag(False), scribble=_flag(False), apply_filter=_flag(False)),
        _neural,
        "PidiNetDetector",
        _annotators("table5_pidinet.pth"),
    ),
    Preprocessor(
        "teed",
        "Soft edge (TEED)",
        _params(detect_resolution=_resolution(), safe_steps=Param(2, 0, 10)),
        _neural_own_size,
        "TEEDdetector",
        Weights("fal-ai/teed", ("5_model.pth",)),
    ),
    Preprocessor(
        "mlsd",
        "Straight lines (M-LSD)",
        _params(
            detect_resolution=_resolution(), thr_v=Param(0.1, 0.01, 2.0, "float"), thr_d=Param(0.1, 0.01, 20.0, "float")
        ),
        _neural,
        "MLSDdetector",
        _annotators("mlsd_large_512_fp32.pth"),
    ),
    Preprocessor(
        "lineart",
        "Line art (realistic)",
        _params(detect_resolution=_resolution(), coarse=_flag(False)),
        _neural,
        "LineartDetector",
        _annotators("sk_model.pth", "sk_model2.pth"),
    ),
    Preprocessor(
        "lineart_anime",
        "Line art (anime)",
        _params(detect_resolution=_resolution()),
        _neural,
        "LineartAnimeDetector",
        _annotators("netG.pth"),
    ),
    Preprocessor(
        "anyline",
        "Line art (Anyline)",
        _params(
            detect_resolution=_resolution(1280),
            gaussian_sigma=Param(2.0, 0.5, 20.0, "float"),
            intensity_threshold=Param(3, 0, 255),
        ),
        _anyline,
        "AnylineDetector",
        Weights("TheMistoAI/MistoLine", ("Anyline/MTEED.pth",)),
    ),
    Preprocessor(
        "mediapipe_face",
        "Face mesh (MediaPipe)",
        _params(
            detect_resolution=_resolution(), max_faces=Param(1, 1, 10), min_confidence=Param(0.5, 0.01, 1.0, "float")
        ),
        _neural,
        "MediapipeFaceDetector",
        packages=("mediapipe",),
    ),
)

PREPROCESSORS: dict[str, Preprocessor] = {entry.name: entry for entry in _ENTRIES}


def _lookup(name: str) -> Preprocessor:
    if name not in PREPROCESSORS:
        raise RequestError(f"preprocessor must be one of {', '.join(PREPROCESSORS)}; got {name!r}.")
    return PREPROCESSORS[name]


# --- availability --------------------------------------------------------------


def _hub_cache() -> str:
    """The Hugging Face hub cache folder, read from the environment per call.

    huggingface_hub reads HF_HUB_CACHE / HF_HOME once, when it is imported;
    reading them here lets the cache be pointed elsewhere after start-up (and
    lets tests point it at an empty folder).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cached_paths(weights: Weights) -> dict[str, str | None]:
    """Each weight file's path in the local cache, or None; never downloads.

    try_to_load_from_cache resolves ``refs/main`` first, so every file it finds
    lies in the same snapshot folder.
    """
    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache()
    paths = {}
    for filename in weights.files:
        path = try_to_load_from_cache(weights.repo, filename, cache_dir=cache)
        paths[filename] = path if isinstance(path, str) else None
    return paths


def availability(name: str) -> tuple[bool, str]:
    """Whether ``name`` can run here without the network, and if not, why.

    The reason is one sentence a user can act on; it is empty when available.
    """
    entry = _lookup(name)
    for package in entry.packages:
        if importlib.util.find_spec(package) is None:
            return False, f"{name} needs the Python package {package}; install it with `pip install {package}`."
    if entry.weights is None:
        return True, ""
    missing = [filename for filename, path in _cached_paths(entry.weights).items() if path is None]
    if missing:
        repo, files = entry.weights.repo, " ".join(missing)
        return False, (
            f"{name} needs {', '.join(missing)} from {repo}, not found in the Hugging Face cache {_hub_cache()}; "
            f"fetch it on a machine with network with `hf download {repo} {files}` and copy that cache here."
        )
    return True, ""


def available() -> list[tuple[str, bool, str]]:
    """(name, ok, reason) for every preprocessor, in registry order, for the UI."""
    return [(name, *availability(name)) for name in PREPROCESSORS]


# --- loading detectors -----------------------------------------------------------

_DETECTORS: dict[str, Any] = {}
_LOAD_LOCK = threading.Lock()


def _import_controlnet_aux() -> Any:
    """controlnet_aux imports every detector (and torch) at once; its import
    warnings are about optional extras (mmcv, mediapipe) and deprecated
    internals, nothing a user can act on, so they are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("controlnet_aux")


def _load(entry: Preprocessor) -> Any:
    """Build the detector; weighted ones from the cached snapshot folder.

    Passing a local folder takes each detector's ``os.path.isdir`` branch of
    ``from_pretrained``, so no code path can reach the network whatever
    HF_HUB_OFFLINE says. A single weight file is named explicitly; detectors
    with several read them under their default names (those in the registry).
    """
    detector_class = getattr(_import_controlnet_aux(), entry.detector)
    if entry.weights is None:
        return detector_class()
    paths = _cached_paths(entry.weights)
    first = entry.weights.files[0]
    snapshot = Path(paths[first]).parents[len(Path(first).parts) - 1]
    if len(entry.weights.files) == 1:
        return detector_class.from_pretrained(str(snapshot), filename=first)
    return detector_class.from_pretrained(str(snapshot))


def _detector(entry: Preprocessor) -> Any:
    """The loaded detector for ``entry``, loaded once per process."""
    if entry.detector is None:
        return None
    with _LOAD_LOCK:
        if entry.name not in _DETECTORS:
            _DETECTORS[entry.name] = _load(entry)
        return _DETECTORS[entry.name]


# --- running -------------------------------------------------------------------


def _check_value(name: str, key: str, spec: Param, value: Any) -> Any:
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise RequestError(f"{key} for {name} must be true or false; got {value!r}.")
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.kind == "int":
        # 100.0 is accepted as 100: UI sliders may send whole numbers as floats.
        # The range first: float() of an int past float's range (JSON allows it) would overflow.
        if not is_number or not spec.min <= value <= spec.max or not float(value).is_integer():
            raise RequestError(f"{key} for {name} must be a whole number from {spec.min} to {spec.max}; got {value!r}.")
        return int(value)
    if not is_number or not spec.min <= value <= spec.max:
        raise RequestError(f"{key} for {name} must be a number from {spec.min:g} to {spec.max:g}; got {value!r}.")
    return float(value)


def check_params(name: str, **params: Any) -> dict[str, Any]:
    """Every parameter of ``name`` with defaults filled in, or a RequestError
    naming the first unknown or out-of-range one."""
    entry = _lookup(name)
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        allowed = ", ".join(entry.params) or "none"
        raise RequestError(f"{name} has no parameter {names_of(unknown)}; allowed: {allowed}.")
    values = {key: _check_value(name, key, spec, params.get(key, spec.default)) for key, spec in entry.params.items()}
    if name == "canny" and values["low_threshold"] > values["high_threshold"]:
        # cv2.Canny would silently swap them.
        raise RequestError(
            f"low_threshold for canny must not be above high_threshold; got {values['low_threshold']} > {values['high_threshold']}."
        )
    return values


def _control_image(detected: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An RGB image of exactly ``size`` from a detector's gray or RGB map.

    Shrinking uses area averaging so thin lines fade rather than vanish;
    enlarging is bilinear, as in controlnet_aux.
    """
    import cv2

    if detected.ndim == 2:
        detected = np.repeat(detected[:, :, None], 3, axis=2)
    width, height = size
    if detected.shape[:2] != (height, width):
        shrinking = detected.shape[0] * detected.shape[1] > width * height
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        detected = cv2.resize(detected, (width, height), interpolation=interpolation)
    return Image.fromarray(np.ascontiguousarray(detected))


def run(name: str, image: Image.Image, **params: Any) -> Image.Image:
    """The control image ``name`` makes from ``image``: RGB, the input's size.

    An RGBA upload loses its alpha (``convert("RGB")``), the same pixels the
    canny ControlNet was trained on.
    """
    # 1. Check inputs
    entry = _lookup(name)
    ok, reason = availability(name)
    if not ok:
        raise RequestError(reason)
    values = check_params(name, **params)
    rgb = np.asarray(image.convert("RGB"))
    # 2. Detect
    detected = entry.apply(_detector(entry), rgb, values)
    # 3. Back to the input's size, as RGB
    return _control_image(detected, image.size)
