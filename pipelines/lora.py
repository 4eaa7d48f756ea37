"""LoRA files from a folder, applied to a loaded model with their weights.

Files are ``<loras_dir>/<name>.safetensors`` (one folder, not searched
recursively: the name is the stem, so two files in subfolders could not be
told apart). Only safetensors: pickled ``.ckpt``/``.bin`` files can run code
when loaded.

Where the adapters live: diffusers' ``load_lora_weights`` wraps the UNet's
and text encoders' layers in PEFT LoRA layers. Every task pipeline is made
with ``from_pipe`` and shares those modules, so a LoRA loaded through any of
them is loaded for all of them, once per base model. The modules themselves
are the record of what is loaded: an adapter's name is the LoRA's name plus
the start of its sha256, so a file that changed on disk loads as a new
adapter (and the stale one is deleted) and nothing else has to be kept in
step. Each run then says which adapters are on, at what weight
(``set_adapters``), or that none are (``disable_lora``: every LoRA layer
returns its base layer's output untouched, so the pixels are the ones from
before any LoRA was loaded).

No torch or diffusers at import time: the request module checks weights with
it before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import FAMILY_NAMES
from pipelines.limits import RequestError

SUFFIX = ".safetensors"
MIN_WEIGHT, MAX_WEIGHT = -2.0, 2.0
MAX_LORAS = 8

# Key spellings of the LoRA formats diffusers reads: PEFT/diffusers
# (lora_A / lora_B), kohya and A1111 (lora_down / lora_up), and diffusers'
# older attention-processor format (to_q_lora.down, lora_linear_layer.down).
_LORA_KEY = re.compile(r"lora(?:_[AB]\b|_down\b|_up\b|\.down\b|\.up\b|_linear_layer\.)")
# Cross-attention's key projection takes the text encoder's width, which
# tells the families apart: 768 SD1.x, 1024 SD2.x, 2048 SDXL.
_TO_K = re.compile(r"attn2[._]to_k[._](?:lora_A|lora_down|lora\.down|lora_linear_layer\.down)")
_WIDTH_FAMILY = {768: "sd", 1024: "sd", 2048: "sdxl"}
# diffusers' and kohya's names for text-encoder layers.
_TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")


class LoraError(RequestError):
    """A LoRA that cannot be used as asked; one sentence naming it and why."""


@dataclass(frozen=True)
class LoraFile:
    name: str  # the file's stem: what a request and a record call it
    path: Path
    sha256: str
    family: str | None  # "sd" (1.x/2.x), "sdxl" or "flux" when the keys say so cheaply, else None
    text_encoder: bool = False  # has text-encoder layers as well as UNet ones
    problem: str | None = None  # why it cannot be used (not a LoRA), else None


def check_weight(name: str, weight: Any) -> float:
    """A LoRA weight as a float, or a LoraError naming the LoRA and the range."""
    ok = not isinstance(weight, bool) and isinstance(weight, (int, float))
    # An int is finite; math.isfinite would overflow on one past float's range (JSON allows it).
    ok = ok and (isinstance(weight, int) or math.isfinite(weight))
    if not ok or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise LoraError(
            f"the weight of LoRA {name!r} must be a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}; got {weight!r}."
        )
    return float(weight)


def available(folder: Path | str) -> list[LoraFile]:
    """Every ``*.safetensors`` in ``folder``, by name; none when the folder does not exist yet."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    paths = sorted((p for p in folder.iterdir() if p.suffix == SUFFIX and p.is_file()), key=lambda p: p.stem.casefold())
    return [_describe(path) for path in paths]


def find(name: str, folder: Path | str) -> LoraFile:
    """The LoRA called ``name`` in ``folder``, or a LoraError listing what there is."""
    path = Path(folder) / f"{name}{SUFFIX}"
    # The name must be a plain stem: no separators, nothing that leaves the folder.
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith(".") or not path.is_file():
        names = [lora.name for lora in available(folder)]
        choice = f"one of {', '.join(names)}" if names else f"a {SUFFIX} file in {folder} (there are none yet)"
        raise LoraError(f"LoRA {name!r} does not exist; it must be {choice}.")
    return _describe(path)


def resolve(loras: Sequence[tuple[str, float]], folder: Path | str) -> list[tuple[LoraFile, float]]:
    """Each (name, weight) checked: a known, usable file, a weight in range, no name twice."""
    if len(loras) > MAX_LORAS:
        raise LoraError(f"at most {MAX_LORAS} LoRAs can be used at once; got {len(loras)}.")
    seen: set[str] = set()
    resolved = []
    for name, weight in loras:
        if name in seen:
            raise LoraError(f"LoRA {name!r} is listed twice; give it one weight.")
        seen.add(name)
        weight = check_weight(name, weight)
        lora = find(name, folder)
        if lora.problem:
            raise LoraError(lora.problem)
        resolved.append((lora, weight))
    return resolved


def records(loras: Sequence[tuple[str, float]], folder: Path | str) -> list[dict[str, Any]]:
    """What a generation's record keeps: each LoRA's name, sha256 and weight, in request order."""
    return [_record(lora, weight) for lora, weight in resolve(loras, folder)]


def apply(pipe: Any, loras: Sequence[tuple[str, float]], folder: Path | str) -> list[dict[str, Any]]:
    """Turn on exactly ``loras`` (name, weight) for the next runs of ``pipe`` and every pipeline sharing its modules.

    Each file is loaded into the shared modules the first time it is used;
    later calls only switch adapters and weights. No LoRAs means ``clear``.
    Returns the records (see ``records``).
    """
    resolved = resolve(loras, folder)
    if not resolved:
        clear(pipe)
        return []
    if not hasattr(pipe, "load_lora_weights"):
        raise LoraError(
            f"{type(pipe).__name__} models cannot take LoRAs; remove the LoRAs or pick a Stable Diffusion model."
        )
    # 1. Load what is not loaded yet (and drop older versions of the same files)
    loaded = _loaded_adapters(pipe)
    for lora, _ in resolved:
        adapter = adapter_name(lora)
        if adapter in loaded:
            continue
        stale = [name for name in loaded if _is_version_of(name, lora)]
        try:
            with _expected_peft_warnings():
                if stale:
                    pipe.delete_adapters(stale)
                _load(pipe, lora, adapter)
        except LoraError:
            # A failed load can leave another adapter active (PEFT picks one
            # when the active one is deleted); a refused request turns all off.
            clear(pipe)
            raise
    # 2. These adapters, these weights, and no others; on, in case a run without LoRAs turned them off
    pipe.set_adapters([adapter_name(lora) for lora, _ in resolved], adapter_weights=[weight for _, weight in resolved])
    pipe.enable_lora()
    return [_record(lora, weight) for lora, weight in resolved]


def text_encoder_key(loras: Sequence[tuple[str, float]], folder: Path | str) -> tuple[tuple[str, float], ...]:
    """What the text encoders' output depends on: each LoRA with text-encoder layers (sha256) and its weight."""
    return tuple((lora.sha256, weight) for lora, weight in resolve(loras, folder) if lora.text_encoder)


def clear(pipe: Any) -> None:
    """No LoRA for the next runs: every LoRA layer passes its base layer's output through unchanged."""
    if _loaded_adapters(pipe):
        pipe.disable_lora()


def adapter_name(lora: LoraFile) -> str:
    """The PEFT adapter name: one per LoRA name, a new one whenever the file's contents change."""
    return f"{_name_part(lora.name)}{lora.sha256[:12]}"


# -- inside ---------------------------------------------------------------------


def _name_part(name: str) -> str:
    # PEFT keeps adapters in ModuleDicts, whose keys may not contain dots; the
    # hash keeps "a-b" and "a_b" apart once both are written with underscores.
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{hashlib.sha256(name.encode()).hexdigest()[:6]}_"


def _is_version_of(adapter: str, lora: LoraFile) -> bool:
    return adapter.startswith(_name_part(lora.name))


def _loaded_adapters(pipe: Any) -> set[str]:
    if not hasattr(pipe, "get_list_adapters"):
        return set()
    return {adapter for adapters in pipe.get_list_adapters().values() for adapter in adapters}


def _load(pipe: Any, lora: LoraFile, adapter: str) -> None:
    own_loader = lora.text_encoder and text_encoder_problem() is not None and hasattr(pipe, "load_lora_into_unet")
    if lora.text_encoder and not own_loader and (reason := text_encoder_problem()):
        raise LoraError(f"LoRA {lora.name!r} has text-encoder layers, which this install cannot load: {reason}.")
    try:
        if own_loader:
            _load_with_text_encoders(pipe, lora, adapter)
        else:
            pipe.load_lora_weights(str(lora.path), adapter_name=adapter)
    except (ValueError, RuntimeError, KeyError) as error:
        # A half-loaded adapter (UNet done, text encoder failed) must not linger.
        if adapter in _loaded_adapters(pipe):
            pipe.delete_adapters(adapter)
        made_for = FAMILY_NAMES.get(lora.family, "another kind of model")
        raise LoraError(f"LoRA {lora.name!r} does not fit this model; its layers were made for {made_for}.") from error
    if adapter not in _loaded_adapters(pipe):
        raise LoraError(f"LoRA {lora.name!r} does not fit this model; none of its layers are in it.")


def _load_with_text_encoders(pipe: Any, lora: LoraFile, adapter: str) -> None:
    """Stable Diffusion's and SDXL's ``load_lora_weights``, with PEFT itself loading the text-encoder layers.

    diffusers reads the file (any format it knows: diffusers, kohya, A1111),
    converts it and loads the UNet part as usual; for each text encoder it
    would call transformers' ``load_adapter``, which refuses this install's
    PEFT (see ``text_encoder_problem``). The same layers go in through
    PEFT's ``inject_adapter_in_model`` and ``set_peft_model_state_dict``, the
    calls that gate wraps, so diffusers' ``set_adapters``, ``disable_lora``
    and ``delete_adapters`` (which work on PEFT's layers directly) manage
    them like any other adapter.
    """
    state, alphas, metadata = pipe.lora_state_dict(str(lora.path), return_lora_metadata=True)
    if not all("lora" in key for key in state):
        raise ValueError(f"{lora.path.name} has keys that are not LoRA layers")
    pipe.load_lora_into_unet(
        state, network_alphas=alphas, unet=pipe.unet, adapter_name=adapter, metadata=metadata, _pipeline=pipe
    )
    for prefix in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, prefix, None)
        if encoder is not None:
            _into_text_encoder(encoder, prefix, state, alphas, metadata, adapter)
        elif any(key.startswith(f"{prefix}.") for key in state):
            raise ValueError(f"{lora.path.name} has layers for a {prefix} this model does not have")


def _into_text_encoder(
    encoder: Any, prefix: str, state: dict, alphas: dict | None, metadata: dict | None, adapter: str
) -> None:
    """The file's layers for one text encoder (keys starting ``prefix.``), as a PEFT adapter named ``adapter``."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import get_peft_kwargs
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    def own(mapping: dict | None) -> dict | None:
        if not mapping:
            return None
        return {key.removeprefix(f"{prefix}."): value for key, value in mapping.items() if key.split(".")[0] == prefix}

    layers = own(state)
    if not layers:
        return
    layers = convert_state_dict_to_peft(convert_state_dict_to_diffusers(layers))
    if not hasattr(encoder, "text_model"):  # transformers 5 flattened CLIPTextModel; older files keep the prefix
        layers = {key.removeprefix("text_model."): value for key, value in layers.items()}
    settings = own(metadata)
    if settings is None:
        ranks = {key: value.shape[1] for key, value in layers.items() if key.endswith("lora_B.weight")}
        settings = get_peft_kwargs(ranks, network_alpha_dict=own(alphas), peft_state_dict=layers, is_unet=False)
    inject_adapter_in_model(LoraConfig(**settings), encoder, adapter_name=adapter)
    loaded = set_peft_model_state_dict(encoder, layers, adapter_name=adapter)
    unexpected = [key for key in getattr(loaded, "unexpected_keys", None) or [] if "lora_" in key]
    if unexpected:
        raise ValueError(f"{len(unexpected)} layers have no place in the {prefix}, e.g. {unexpected[0]}")
    encoder.to(device=encoder.device, dtype=encoder.dtype)


def text_encoder_problem() -> str | None:
    """Why text-encoder LoRA layers cannot be loaded here, or None when they can.

    diffusers hands them to transformers' ``load_adapter``, which refuses a
    PEFT older than its ``MIN_PEFT_VERSION`` (transformers 5.24 asks for
    0.22; PyPI's newest is 0.21.2 as of this writing). UNet layers go through
    diffusers' own loader, which asks for less; for Stable Diffusion and SDXL
    ``_load_with_text_encoders`` loads the text-encoder layers through PEFT
    itself, so only FLUX's text-encoder layers are refused for it.
    """
    from importlib.metadata import version

    import transformers
    from packaging.version import Version
    from transformers.integrations import peft as transformers_peft

    needed = getattr(transformers_peft, "MIN_PEFT_VERSION", "0")
    installed = version("peft")
    if Version(installed) < Version(needed):
        return f"transformers {transformers.__version__} needs peft {needed} or newer and peft {installed} is installed"
    return None


@contextlib.contextmanager
def _expected_peft_warnings():
    """PEFT warns about what this module does on purpose: several adapters side by side,
    and deleting the active one (the adapters are set again right after)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _record(lora: LoraFile, weight: float) -> dict[str, Any]:
    return {"name": lora.name, "sha256": lora.sha256, "weight": weight}


def _describe(path: Path) -> LoraFile:
    stat = path.stat()
    sha256, family, text_encoder, problem = _inspect(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return LoraFile(name=path.stem, path=path, sha256=sha256, family=family, text_encoder=text_encoder, problem=problem)


@functools.lru_cache(maxsize=1024)
def _inspect(path: str, mtime_ns: int, size: int) -> tuple[str, str | None, bool, str | None]:
    """(sha256, family, text_encoder, problem) of a file; the key holds mtime and size, so an edited file is read again."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return (digest.hexdigest(), *_read_keys(Path(path)))


def _read_keys(path: Path) -> tuple[str | None, bool, str | None]:
    """(family guess, text_encoder, problem) from the safetensors header alone: no tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            keys = list(handle.keys())
            if not any(_LORA_KEY.search(key) for key in keys):
                return (
                    None,
                    False,
                    f"{path.name} is not a LoRA: it has no LoRA weights (lora_A/lora_B or lora_down/lora_up).",
                )
            to_k = next((key for key in keys if _TO_K.search(key)), None)
            width = handle.get_slice(to_k).get_shape()[-1] if to_k else None
    except (SafetensorError, OSError, ValueError) as error:
        return None, False, f"{path.name} is not a LoRA: it cannot be read as safetensors ({_first_line(error)})."
    text_encoder = any(key.startswith(_TEXT_ENCODER_PREFIXES) for key in keys)
    if any(key.startswith(("text_encoder_2.", "lora_te2_")) for key in keys):
        return "sdxl", text_encoder, None
    if any("single_transformer_blocks" in key for key in keys):  # FLUX's DiT; SD1.x/SDXL UNets have none
        return "flux", text_encoder, None
    return _WIDTH_FAMILY.get(width), text_encoder, None
