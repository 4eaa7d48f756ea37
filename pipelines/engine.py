"""The engine: load a model once, derive every task's pipeline, run requests.

What it owns, and why here:
- model sources (embedded, local diffusers folder, hub id, single .safetensors)
  and a revision for each, so a record says which weights made an image;
- device and dtype, picked once;
- one base pipeline per model; the other tasks' pipelines come from
  ``from_pipe`` and share its modules (no second copy of the weights);
- the sampler (a fresh scheduler per run), seeding through CPU generators so a
  seed means the same noise on every device, the text-embedding cache,
  per-step progress and cooperative cancel.

It knows nothing of Gradio or the database (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import platform
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
import transformers
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from pipelines import embedded
from pipelines.requests import GenerationRequest
from pipelines.samplers import make_scheduler

EMBEDDED = "embedded"
ProgressFn = Callable[[int, int], None]

# Each task's pipeline class is derived from the loaded base with from_pipe.
_TASK_PIPELINES = {
    "txt2img": AutoPipelineForText2Image,
    "img2img": AutoPipelineForImage2Image,
    "inpaint": AutoPipelineForInpainting,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # as the user wrote it; the key everything else uses
    kind: str  # embedded | folder | single_file | hub
    location: str  # a path, or the hub id


def resolve_source(model: str) -> ModelSource:
    """Where ``model`` lives, without loading anything."""
    if model == EMBEDDED:
        if not (embedded.FOLDER / "model_index.json").is_file():
            raise ModelError(f"the embedded model's weights are missing from {embedded.FOLDER}; reinstall Atelier.")
        return ModelSource(model, "embedded", str(embedded.FOLDER))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"model folder {model!r} has no model_index.json; it must be a diffusers pipeline folder.")
        return ModelSource(model, "folder", str(path.resolve()))
    if path.suffix in _SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelError(f"model file {model!r} does not exist.")
        return ModelSource(model, "single_file", str(path.resolve()))
    if _HUB_ID.match(model):
        return ModelSource(model, "hub", model)
    raise ModelError(
        f"model must be 'embedded', a diffusers folder, a .safetensors file or a hub id like 'org/name'; got {model!r}."
    )


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_dtype(device: torch.device, preferred: str | None = None) -> torch.dtype:
    if preferred:
        if preferred not in _DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(_DTYPES)}; got {preferred!r}.")
        return _DTYPES[preferred]
    # Half precision halves memory and is what GPUs are fast at; CPUs are not.
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


# Files that decide what a model computes (weights, configs, tokenizer); a
# card or a training log can change without changing a single pixel.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".json", ".txt", ".model"}
_NOT_WEIGHTS = {"atelier.json"}


def _weight_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and p.name not in _NOT_WEIGHTS and not p.name.startswith(".")
    ]


def _hash_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _family(pipe: DiffusionPipeline) -> str:
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    raise ModelError(f"{type(pipe).__name__} models are not supported yet; use a Stable Diffusion 1.x/2.x or SDXL model.")


def _single_file_class(path: Path) -> type[DiffusionPipeline]:
    """SDXL checkpoints carry a second text encoder under ``conditioner.embedders.1``."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if any(key.startswith("conditioner.embedders.1.") for key in handle.keys()):
                return StableDiffusionXLPipeline
    return StableDiffusionPipeline


@dataclass
class LoadedModel:
    source: ModelSource
    revision: str  # hub commit, or sha256 of the weight files
    family: str  # sd | sdxl
    pipelines: dict[str, DiffusionPipeline] = field(default_factory=dict)

    @property
    def base(self) -> DiffusionPipeline:
        return self.pipelines["txt2img"]


class CancelToken:
    """Set by whoever asked for the run; the engine stops at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class TextEmbeddingCache:
    """LRU of encoded prompts, keyed by model revision, prompt and negative prompt."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, dict[str, torch.Tensor | None]] = OrderedDict()

    def get(self, key: tuple) -> dict[str, torch.Tensor | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, value: dict[str, torch.Tensor | None]) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class GenerationResult:
    images: list[Any]  # PIL images, one per seed; empty when cancelled
    seeds: list[int]
    cancelled: bool
    duration_ms: int
    model_revision: str
    environment: dict[str, Any]


class Engine:
    """Loads each model once and runs requests on it, one at a time."""

    def __init__(
        self,
        *,
        device: str | None = None,
        dtype: str | None = None,
        text_cache_size: int = 64,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.loads = 0  # base-model loads; switching tasks must not add to it
        self._models: dict[str, LoadedModel] = {}
        # The studio reports its own progress; the libraries' console bars
        # would only interleave with it.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        # One generation at a time per engine: the GPU is the shared resource.
        self._lock = threading.RLock()

    # -- models -----------------------------------------------------------

    def load(self, model: str) -> LoadedModel:
        with self._lock:
            if model not in self._models:
                self._models[model] = self._load(resolve_source(model))
                self.loads += 1
            return self._models[model]

    def _load(self, source: ModelSource) -> LoadedModel:
        options = {"dtype": self.dtype}
        try:
            if source.kind == "single_file":
                path = Path(source.location)
                pipe = _single_file_class(path).from_single_file(str(path), **options)
                revision = _hash_files([path], path.parent)
            elif source.kind == "hub":
                # download() returns the cached snapshot folder, named by its commit.
                folder = Path(DiffusionPipeline.download(source.location))
                pipe = AutoPipelineForText2Image.from_pretrained(str(folder), **options)
                revision = folder.name
            else:  # a diffusers folder; the embedded model is one
                folder = Path(source.location)
                pipe = AutoPipelineForText2Image.from_pretrained(str(folder), **options)
                revision = _hash_files(_weight_files(folder), folder)
        except ModelError:
            raise
        except (OSError, ValueError) as error:
            raise ModelError(f"model {source.name!r} could not be loaded: {error}") from error
        family = _family(pipe)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return LoadedModel(source=source, revision=revision, family=family, pipelines={"txt2img": pipe})

    def pipeline(self, model: str, task: str) -> DiffusionPipeline:
        """The pipeline for ``task``, sharing the base model's modules."""
        with self._lock:
            loaded = self.load(model)
            if task not in loaded.pipelines:
                if task not in _TASK_PIPELINES:
                    raise ModelError(f"task must be one of {', '.join(_TASK_PIPELINES)}; got {task!r}.")
                pipe = _TASK_PIPELINES[task].from_pipe(loaded.base)
                pipe.set_progress_bar_config(disable=True)
                loaded.pipelines[task] = pipe
            return loaded.pipelines[task]

    def environment(self) -> dict[str, Any]:
        """What a rerun must match to give the same pixels."""
        env = {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": self.device.type,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.device.type == "cuda":
            env["device_name"] = torch.cuda.get_device_name(self.device)
        else:
            env["device_name"] = platform.machine()
            # CPU kernels split work by thread count, which changes low bits.
            env["threads"] = torch.get_num_threads()
        return env

    # -- running ----------------------------------------------------------

    def _encode_prompt(self, loaded: LoadedModel, pipe: DiffusionPipeline, request: GenerationRequest, cfg: bool):
        key = (loaded.source.name, loaded.revision, request.prompt, request.negative_prompt, cfg)
        cached = self.text_cache.get(key)
        if cached is None:
            # None, not "", so each pipeline keeps its own default for an empty
            # negative prompt (SDXL uses zeros there).
            negative = request.negative_prompt or None
            with torch.inference_mode():
                if loaded.family == "sdxl":
                    embeds = pipe.encode_prompt(
                        prompt=request.prompt,
                        device=self.device,
                        num_images_per_prompt=1,
                        do_classifier_free_guidance=cfg,
                        negative_prompt=negative,
                    )
                    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
                else:
                    embeds = pipe.encode_prompt(request.prompt, self.device, 1, cfg, negative)
                    names = ("prompt_embeds", "negative_prompt_embeds")
            cached = dict(zip(names, embeds))
            self.text_cache.put(key, cached)
        return {name: value for name, value in cached.items() if value is not None}

    def run(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> GenerationResult:
        with self._lock:
            started = time.perf_counter()
            # 1. Model and task pipeline (loaded once, then shared)
            loaded = self.load(request.model)
            pipe = self.pipeline(request.model, request.task)
            # 2. A fresh scheduler for the chosen sampler
            pipe.scheduler = make_scheduler(request.sampler, loaded.base.scheduler.config)
            # 3. Prompt embeddings, from the cache when the prompt was seen
            cfg = request.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
            embeds = self._encode_prompt(loaded, pipe, request, cfg)
            # 4. One CPU generator per image: same noise on every device, and
            #    image i of a batch equals a single run with seed + i.
            seeds = request.seeds
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

            def on_step_end(pipeline, step, timestep, tensors):
                if progress is not None:
                    progress(step + 1, getattr(pipeline, "num_timesteps", request.num_inference_steps))
                if cancel is not None and cancel.cancelled:
                    pipeline._interrupt = True
                return tensors

            # 5. Denoise and decode
            images: list[Any] = []
            if cancel is None or not cancel.cancelled:
                output = pipe(
                    **embeds,
                    **request.pipeline_arguments(),
                    generator=generators,
                    callback_on_step_end=on_step_end,
                    output_type="pil",
                )
                images = list(output.images)
            cancelled = cancel is not None and cancel.cancelled
            return GenerationResult(
                images=[] if cancelled else images,
                seeds=seeds,
                cancelled=cancelled,
                duration_ms=round((time.perf_counter() - started) * 1000),
                model_revision=loaded.revision,
                environment=self.environment(),
            )
