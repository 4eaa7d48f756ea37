"""IP-Adapter: a reference image steers style and composition, at a scale.

Where the weights come from: per family, the h94/IP-Adapter files diffusers
documents (``REGISTRY``), found in the Hugging Face cache, or a local folder
holding the adapter's ``.safetensors`` file and an ``image_encoder/`` folder
(the CLIP vision model it was trained with). Nothing is ever downloaded
here: ``availability`` says what is missing and how to get it.

Where the adapter lives: ``load_ip_adapter`` swaps the UNet's cross-attention
processors for IP-Adapter ones and gives the UNet an image projection
(``encoder_hid_proj``). Every task pipeline is made with ``from_pipe`` and
shares that UNet, so one load serves txt2img, img2img, inpaint and ControlNet
alike; only the CLIP image encoder is a pipeline component, so each task
pipeline is handed the same one.

Turning it off: diffusers' ``unload_ip_adapter`` puts *default* (SDPA)
processors back, not the ones that were there (the engine's "math"
attention switch sets others), and keeping the adapter loaded at scale 0
cannot run without a reference image (the UNet then demands
``image_embeds``). So ``detach`` puts back the very processor objects that
were there before ``attach`` and sets the adapter's aside on the UNet:
attaching again costs no load, and a run without a reference image is the run
of a model that never had the adapter, pixel for pixel
(tests/pipelines/test_ip_adapter.py measures both).

No torch or diffusers at import time: the UI asks ``availability`` before
anything heavy is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.limits import RequestError

MIN_SCALE, MAX_SCALE = 0.0, 2.0
IMAGE_ENCODER = "image_encoder"
# transformers reads these two; pickled weights (pytorch_model.bin) can run code when loaded.
_ENCODER_FILES = ("config.json", "model.safetensors")
_FAMILY_WORDS = {"sd": "SD 1.5", "sdxl": "SDXL", "flux": "FLUX"}
_STATE = "_atelier_ip_adapter"  # the attribute on the shared UNet that says what is loaded


class IPAdapterError(RequestError):
    """An IP-Adapter that cannot be used as asked; one sentence naming it and why."""


@dataclass(frozen=True)
class HubWeights:
    repo: str
    subfolder: str
    weight_name: str
    image_encoder_folder: str  # from the repository's root

    def files(self) -> list[str]:
        return [f"{self.subfolder}/{self.weight_name}"] + [
            f"{self.image_encoder_folder}/{name}" for name in _ENCODER_FILES
        ]


# The plain IP-Adapters (one image, four tokens) from diffusers' IP-Adapter guide.
REGISTRY: dict[str, HubWeights] = {
    "sd": HubWeights("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors", "models/image_encoder"),
    "sdxl": HubWeights("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder"),
}


@dataclass(frozen=True)
class IPAdapterWeights:
    """Weights found on disk, in the terms ``load_ip_adapter`` takes (all local)."""

    name: str  # what a record calls them: "h94/IP-Adapter/models/ip-adapter_sd15.safetensors", or the folder
    root: Path  # the cached hub snapshot, or the local folder
    subfolder: str
    weight_name: str
    image_encoder_folder: str  # from root
    revision: str  # the hub commit, or the sha256 of the folder's weight files

    @property
    def weight_file(self) -> Path:
        return self.root / self.subfolder / self.weight_name

    @property
    def image_encoder(self) -> Path:
        return self.root / self.image_encoder_folder

    def record(self) -> dict[str, str]:
        """What a generation's record keeps, so a rerun can tell whether the same weights are still here."""
        return {"name": self.name, "revision": self.revision}


def check_scale(scale: Any) -> float:
    """The scale as a float, or an IPAdapterError naming the range."""
    ok = not isinstance(scale, bool) and isinstance(scale, (int, float)) and math.isfinite(scale)
    if not ok or not MIN_SCALE <= scale <= MAX_SCALE:
        raise IPAdapterError(f"ip_adapter_scale must be a number from {MIN_SCALE:g} to {MAX_SCALE:g}; got {scale!r}.")
    return float(scale)


# -- finding the weights -----------------------------------------------------------


def find(family: str, source: str | Path | None = None, *, cache_dir: str | Path | None = None) -> IPAdapterWeights:
    """The family's IP-Adapter on disk: ``source`` a local folder, or None for the registry's hub files in the cache."""
    if family not in REGISTRY:
        raise IPAdapterError(
            f"IP-Adapter is not available for {_FAMILY_WORDS.get(family, family)} models yet; remove the reference image."
        )
    if source is not None:
        return _from_folder(family, Path(source).expanduser())
    return _from_cache(REGISTRY[family], cache_dir)


def availability(
    family: str, source: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> tuple[bool, str]:
    """(True, where the weights are) or (False, one sentence saying what is missing and how to get it)."""
    try:
        weights = find(family, source, cache_dir=cache_dir)
    except IPAdapterError as error:
        return False, str(error)
    return (
        True,
        f"IP-Adapter weights for {_FAMILY_WORDS.get(family, family)}: {weights.name} ({weights.revision[:12]}).",
    )


def _from_cache(hub: HubWeights, cache_dir: str | Path | None) -> IPAdapterWeights:
    from huggingface_hub import try_to_load_from_cache

    found = {name: try_to_load_from_cache(hub.repo, name, cache_dir=cache_dir) for name in hub.files()}
    missing = [name for name, path in found.items() if not isinstance(path, str)]
    if missing:
        raise IPAdapterError(
            f"IP-Adapter weights {hub.repo}/{hub.subfolder}/{hub.weight_name} are not on this machine "
            f"({', '.join(missing)} missing from the Hugging Face cache); download them with "
            f"`hf download {hub.repo} {' '.join(hub.files())}` or set a local IP-Adapter folder."
        )
    # A cached file is <snapshot>/<name>, and the snapshot folder is named by its commit.
    weight = f"{hub.subfolder}/{hub.weight_name}"
    snapshot = Path(found[weight]).parents[len(Path(weight).parts) - 1]
    return IPAdapterWeights(
        name=f"{hub.repo}/{weight}",
        root=snapshot,
        subfolder=hub.subfolder,
        weight_name=hub.weight_name,
        image_encoder_folder=hub.image_encoder_folder,
        revision=snapshot.name,
    )


def _from_folder(family: str, folder: Path) -> IPAdapterWeights:
    if not folder.is_dir():
        raise IPAdapterError(f"IP-Adapter folder {str(folder)!r} does not exist.")
    weights = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if REGISTRY[family].weight_name in weights:
        weights = [REGISTRY[family].weight_name]
    if len(weights) != 1:
        problem = (
            "has no .safetensors weight file"
            if not weights
            else f"has several .safetensors files ({', '.join(weights)})"
        )
        raise IPAdapterError(
            f"IP-Adapter folder {str(folder)!r} {problem}; it must hold one adapter file and an {IMAGE_ENCODER} folder."
        )
    encoder = folder / IMAGE_ENCODER
    if not all((encoder / name).is_file() for name in _ENCODER_FILES):
        raise IPAdapterError(
            f"IP-Adapter folder {str(folder)!r} has no {IMAGE_ENCODER}/{' and '.join(_ENCODER_FILES)}; "
            f"copy in the CLIP image encoder the adapter was trained with."
        )
    files = [folder / weights[0]] + [encoder / name for name in _ENCODER_FILES]
    return IPAdapterWeights(
        name=str(folder.resolve()),
        root=folder.resolve(),
        subfolder="",
        weight_name=weights[0],
        image_encoder_folder=IMAGE_ENCODER,
        revision=_sha256(tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)),
    )


@functools.lru_cache(maxsize=64)
def _sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    """Of the files' contents; keyed by path, mtime and size, so an edited file is read again."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# -- on and off ------------------------------------------------------------------


@dataclass
class _Loaded:
    """What attach changed on a UNet, kept on the UNet itself so every pipeline sharing it sees the same."""

    weights: IPAdapterWeights
    originals: dict[str, Any]  # the attention processors from before the adapter
    original_projection: Any
    original_hid_type: str | None
    processors: dict[str, Any]  # the adapter's
    projection: Any
    image_encoder: Any
    feature_extractor: Any
    on: bool = True


def attach(pipe: Any, weights: IPAdapterWeights, scale: float) -> None:
    """Turn the adapter on for ``pipe`` (and every pipeline sharing its UNet) at ``scale``.

    Loads the weights the first time (or when they changed); afterwards it only
    switches. The run then passes ``ip_adapter_image``.
    """
    scale = check_scale(scale)
    if not hasattr(pipe, "load_ip_adapter") or not hasattr(pipe, "unet"):
        raise IPAdapterError(
            f"{type(pipe).__name__} cannot take an IP-Adapter; remove the reference image or pick a Stable Diffusion model."
        )
    unet = pipe.unet
    loaded: _Loaded | None = getattr(unet, _STATE, None)
    # 1. Load, unless these very weights are loaded already
    if loaded is not None and loaded.weights != weights:
        detach(pipe)
        delattr(unet, _STATE)
        loaded = None
    if loaded is None:
        _check_fits(unet, weights)
        loaded = _load(pipe, weights)
        setattr(unet, _STATE, loaded)
    # 2. Its processors and projection in the UNet
    if not loaded.on:
        _move(loaded, unet)
        unet.set_attn_processor(dict(loaded.processors))
        unet.encoder_hid_proj = loaded.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        loaded.on = True
    # 3. The shared image encoder in this pipeline (one made with from_pipe before the load has none)
    if pipe.image_encoder is not loaded.image_encoder:
        pipe.register_modules(image_encoder=loaded.image_encoder)
    if pipe.feature_extractor is None:
        pipe.register_modules(feature_extractor=loaded.feature_extractor)
    pipe.set_ip_adapter_scale(scale)


def detach(pipe: Any) -> None:
    """The UNet's attention exactly as before ``attach``; the adapter stays in memory for the next attach."""
    unet = getattr(pipe, "unet", None)
    loaded: _Loaded | None = getattr(unet, _STATE, None)
    if loaded is None or not loaded.on:
        return
    unet.set_attn_processor(dict(loaded.originals))
    unet.encoder_hid_proj = loaded.original_projection
    unet.config.encoder_hid_dim_type = loaded.original_hid_type
    loaded.on = False


def attached(pipe: Any) -> IPAdapterWeights | None:
    """The weights switched on in ``pipe``'s UNet, or None."""
    loaded: _Loaded | None = getattr(getattr(pipe, "unet", None), _STATE, None)
    return loaded.weights if loaded is not None and loaded.on else None


# -- inside ----------------------------------------------------------------------


def _load(pipe: Any, weights: IPAdapterWeights) -> _Loaded:
    from safetensors import SafetensorError

    unet = pipe.unet
    before = {
        "originals": dict(unet.attn_processors),
        "original_projection": unet.encoder_hid_proj,
        "original_hid_type": unet.config.encoder_hid_dim_type,
    }
    components = {"image_encoder": pipe.image_encoder, "feature_extractor": pipe.feature_extractor}
    # An encoder left by other weights would be kept by load_ip_adapter; these weights bring their own.
    pipe.register_modules(image_encoder=None)
    try:
        pipe.load_ip_adapter(
            str(weights.root),
            subfolder=weights.subfolder,
            weight_name=weights.weight_name,
            image_encoder_folder=weights.image_encoder_folder,
            local_files_only=True,
        )
    except Exception as error:
        # Half a load (the encoder in, the UNet's processors swapped, its projection refused) must not linger.
        unet.set_attn_processor(dict(before["originals"]))
        unet.encoder_hid_proj = before["original_projection"]
        unet.config.encoder_hid_dim_type = before["original_hid_type"]
        pipe.register_modules(**components)
        if isinstance(error, (OSError, ValueError, RuntimeError, KeyError, SafetensorError)):
            reason = f"{type(error).__name__}: {_first_line(error)}"
            raise IPAdapterError(f"IP-Adapter {weights.name!r} could not be loaded ({reason}).") from error
        raise
    _keep_math_attention(unet, before["originals"])
    return _Loaded(
        weights=weights,
        **before,
        processors=dict(unet.attn_processors),
        projection=unet.encoder_hid_proj,
        image_encoder=pipe.image_encoder,
        feature_extractor=pipe.feature_extractor,
    )


def _check_fits(unet: Any, weights: IPAdapterWeights) -> None:
    """The file's layers against this UNet's cross-attention, before anything is changed.

    diffusers numbers the adapter's layers 1, 3, 5, ... over the UNet's
    attention processors in order (``_convert_ip_adapter_attn_to_diffusers``
    in diffusers/loaders/unet.py): every cross-attention needs its
    ``to_k_ip``/``to_v_ip``, shaped like its own ``to_k``.
    """
    from safetensors import SafetensorError, safe_open

    name = weights.name
    try:
        with safe_open(str(weights.weight_file), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise IPAdapterError(
            f"IP-Adapter file {str(weights.weight_file)!r} is not a readable safetensors file: {_first_line(error)}"
        ) from error
    if not any(key.startswith("image_proj.") for key in shapes) or not any(
        key.startswith("ip_adapter.") for key in shapes
    ):
        raise IPAdapterError(
            f"IP-Adapter file {str(weights.weight_file)!r} is not an IP-Adapter; it has no image_proj and ip_adapter weights."
        )
    made_for = shapes.get("ip_adapter.1.to_k_ip.weight", (None, None))[-1]
    cross = [key for key in unet.attn_processors if not key.endswith("attn1.processor")]
    for index, processor in enumerate(cross):
        expected = tuple(unet.get_submodule(processor.removesuffix(".processor")).to_k.weight.shape)
        for layer in ("to_k_ip", "to_v_ip"):
            if shapes.get(f"ip_adapter.{2 * index + 1}.{layer}.weight") != expected:
                raise IPAdapterError(
                    f"IP-Adapter {name!r} does not fit this model: it was made for a text width of {made_for} "
                    f"and this model's is {unet.config.cross_attention_dim}; use the adapter for this model's family."
                )
    if "image_proj.proj.weight" in shapes:  # the plain adapter: a linear map of the encoder's image embedding
        width, tokens = unet.config.cross_attention_dim, 4
        embedding = shapes["image_proj.proj.weight"][-1]
        expected = {
            "proj.weight": (tokens * width, embedding),
            "proj.bias": (tokens * width,),
            "norm.weight": (width,),
            "norm.bias": (width,),
        }
        for key, shape in expected.items():
            if shapes.get(f"image_proj.{key}") != shape:
                raise IPAdapterError(f"IP-Adapter {name!r} is incomplete: it has no image_proj.{key} of shape {shape}.")
        config = json.loads((weights.image_encoder / "config.json").read_text())
        if config.get("projection_dim") != embedding:
            raise IPAdapterError(
                f"IP-Adapter {name!r} and its image encoder do not match: the adapter takes image embeddings of "
                f"{embedding} numbers and the encoder makes {config.get('projection_dim')}."
            )


def _keep_math_attention(unet: Any, originals: dict[str, Any]) -> None:
    """Cross-attention stays plain softmax(QK)V where the engine's "math" switch chose it.

    diffusers installs its SDPA IP-Adapter processor whenever torch has SDPA;
    its plain twin holds the same weights under the same names.
    """
    from diffusers.models.attention_processor import AttnProcessor, IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    swapped = {}
    for name, processor in unet.attn_processors.items():
        if type(originals[name]) is AttnProcessor and isinstance(processor, IPAdapterAttnProcessor2_0):
            plain = IPAdapterAttnProcessor(
                processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, list(processor.scale)
            )
            plain.load_state_dict(processor.state_dict())
            swapped[name] = plain.to(device=unet.device, dtype=unet.dtype)
    if swapped:
        unet.set_attn_processor({**unet.attn_processors, **swapped})


def _move(loaded: _Loaded, unet: Any) -> None:
    """Set-aside modules follow the UNet, which may have moved while they were out of it."""
    for module in (*loaded.processors.values(), loaded.projection):
        if hasattr(module, "to"):
            module.to(device=unet.device, dtype=unet.dtype)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
