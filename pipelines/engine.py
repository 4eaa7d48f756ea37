"""The engine: the resident models, each task's pipeline derived from them, and a run.

What it owns, and why here:
- the models in memory: each loaded once (``pipelines.loaders``), at most
  ``max_models`` of them, the least recently used dropped first;
- one base pipeline per model; the other tasks' pipelines come from
  ``from_pipe`` and share its modules (no second copy of the weights), and
  ControlNets join that base the same way (each loaded once);
- ``run``: the numbered steps of one generation, in the order that keeps its
  pixels reproducible: a fresh scheduler for the sampler, the LoRAs and the
  reference image set on the shared modules, seeding through CPU generators
  so a seed means the same noise on every device, and the environment a
  rerun must match.

What it leaves to others: where a model lives and its revision
(``sources``), device, dtype and switches (``devices``), the prompt-embedding
cache (``prompt_cache``), each task's inputs and paste-back
(``task_inputs``), variation noise (``variations``), the SDXL refiner
(``refiner``), per-step progress and cancel (``progress``).

It knows nothing of Gradio or the database (see docs/architecture.md).
"""

from __future__ import annotations

import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
)

from pipelines import ip_adapter, lora
from pipelines.devices import Switches, pick_device, pick_dtype
from pipelines.errors import ModelError, check_family
from pipelines.loaders import LoadedControlNet, LoadedModel, controlnet_fits, load_controlnet, load_model
from pipelines.progress import CancelToken, ProgressFn, on_step_end
from pipelines.prompt_cache import TextEmbeddingCache
from pipelines.refiner import Stages, refine
from pipelines.requests import GenerationRequest
from pipelines.samplers import SamplerNotAvailable, make_scheduler
from pipelines.sources import resolve_source
from pipelines.task_inputs import TaskInputs
from pipelines.variations import variation_latents

# Each task's pipeline class is derived from the loaded base with from_pipe.
_TASK_PIPELINES = {
    "txt2img": AutoPipelineForText2Image,
    "img2img": AutoPipelineForImage2Image,
    "inpaint": AutoPipelineForInpainting,
}


@dataclass(frozen=True)
class GenerationResult:
    images: list[Any]  # PIL images, one per seed; empty when cancelled
    seeds: list[int]
    cancelled: bool
    duration_ms: int
    model_revision: str
    environment: dict[str, Any]
    derived: list[tuple[str, Any]] = field(default_factory=list)  # (role, image) made from the inputs: control maps


class Engine:
    """Loads each model once and runs requests on it, one at a time."""

    def __init__(
        self,
        *,
        device: str | None = None,
        dtype: str | None = None,
        text_cache_size: int = 64,
        max_models: int = 2,
        switches: Switches | None = None,
        ip_adapter_folders: dict[str, str] | None = None,
        loras_dir: str | Path | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.switches = switches or Switches()
        self.switches.check(self.device)
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.loads = 0  # base-model loads; switching tasks must not add to it
        self.max_models = max(1, max_models)
        # Per family, a local IP-Adapter folder; a family not named here uses the Hugging Face cache.
        self.ip_adapter_folders = dict(ip_adapter_folders or {})
        self.loras_dir = Path(loras_dir) if loras_dir else None
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._controlnets: dict[str, LoadedControlNet] = {}
        # The studio reports its own progress; the libraries' console bars
        # would only interleave with it.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        # One generation at a time per engine: the GPU is the shared resource.
        self._lock = threading.RLock()

    # -- models -----------------------------------------------------------

    def load(self, model: str) -> LoadedModel:
        """The model, loaded once; at most ``max_models`` stay resident, the least recently used goes first."""
        with self._lock:
            if model in self._models:
                self._models.move_to_end(model)
                return self._models[model]
            source = resolve_source(model)
            while len(self._models) >= self.max_models:
                self._evict(next(iter(self._models)))
            self._models[model] = load_model(source, dtype=self.dtype, device=self.device, switches=self.switches)
            self.loads += 1
            return self._models[model]

    def resident(self) -> list[str]:
        """The models in memory, least recently used first."""
        return list(self._models)

    def family_of(self, model: str) -> str | None:
        """A resident model's family, without waiting for a running generation; None when not loaded."""
        loaded = self._models.get(model)
        return loaded.family if loaded is not None else None

    def _evict(self, model: str) -> None:
        evicted = self._models.pop(model)
        evicted.pipelines.clear()
        self.free_memory()

    def free_memory(self) -> None:
        """Drop what can be rebuilt: cached prompt embeddings, and the GPU allocator's spare blocks."""
        import gc

        self.text_cache.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def controlnet(self, name: str) -> LoadedControlNet:
        """A ControlNet model, loaded once and kept beside the base models."""
        with self._lock:
            if name not in self._controlnets:
                self._controlnets[name] = load_controlnet(name, dtype=self.dtype, device=self.device)
            return self._controlnets[name]

    def pipeline(
        self,
        model: str,
        task: str,
        controlnet_names: tuple[str, ...] = (),
        mode: str = "txt2img",
        *,
        refining: bool = False,
    ) -> DiffusionPipeline:
        """The pipeline for ``task``, sharing the base model's modules.

        For ControlNet, ``mode`` (txt2img, img2img or inpaint) picks diffusers'
        ControlNet pipeline of that kind and ``controlnet_names`` its models.
        ``refining``: the image-to-image pipeline that finishes another SDXL model's latents.
        """
        with self._lock:
            loaded = self.load(model)
            key = (task, mode, controlnet_names)
            if key in loaded.pipelines:
                return loaded.pipelines[key]
            kind = mode if task == "controlnet" else task
            if kind not in _TASK_PIPELINES:
                raise ModelError(f"task must be one of {', '.join(_TASK_PIPELINES)} or controlnet; got {task!r}.")
            if loaded.inpainting_only and kind != "inpaint":
                raise ModelError(
                    f"model {model!r} is an inpainting model (its UNet takes 9 channels); use it for inpainting only."
                )
            if loaded.refiner_only and not refining:
                raise ModelError(
                    f"model {model!r} is an SDXL refiner (it has one text encoder); pick it as the refiner of an SDXL model."
                )
            extra: dict[str, Any] = {}
            if task == "controlnet":
                models = [self._fitting_controlnet(loaded, name).model for name in controlnet_names]
                extra["controlnet"] = models[0] if len(models) == 1 else models
            made_as = "img2img" if isinstance(loaded.base, StableDiffusionXLImg2ImgPipeline) else "txt2img"
            if kind == made_as and not extra:
                pipe = loaded.base
            else:
                pipe = _TASK_PIPELINES[kind].from_pipe(loaded.base, **extra)
                pipe.set_progress_bar_config(disable=True)
            loaded.pipelines[key] = pipe
            return pipe

    def _fitting_controlnet(self, loaded: LoadedModel, name: str) -> LoadedControlNet:
        control = self.controlnet(name)
        if not controlnet_fits(control, loaded):
            raise ModelError(
                f"controlnet {name!r} was made for another kind of model than {loaded.source.name!r}; "
                f"pick one listed for this model."
            )
        return control

    def environment(self) -> dict[str, Any]:
        """What a rerun must match to give the same pixels."""
        env = {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": self.device.type,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.switches.fingerprint(),
        }
        if self.device.type == "cuda":
            env["device_name"] = torch.cuda.get_device_name(self.device)
        else:
            env["device_name"] = platform.machine()
            # CPU kernels split work by thread count, which changes low bits.
            env["threads"] = torch.get_num_threads()
        return env

    # -- running ----------------------------------------------------------

    def check(self, request: GenerationRequest) -> LoadedModel:
        """Load the request's model and refuse, before anything is recorded, what it cannot do."""
        loaded = self.load(request.model)
        check_family(loaded.family, request)
        if request.ip_adapter_image is not None:
            self._ip_adapter_weights(loaded)
        if request.loras:
            lora.resolve(request.loras, self._loras_folder())
        if request.refiner is not None:
            self._refiner(request)
            self.load(request.model)  # the base stays the most recently used
        return loaded

    def _refiner(self, request: GenerationRequest) -> tuple[LoadedModel, DiffusionPipeline]:
        """The request's SDXL refiner and its image-to-image pipeline, loaded beside the base."""
        if self.max_models < 2:
            raise ModelError(
                "a refiner needs room for two models (the base and the refiner); set ATELIER_MAX_MODELS to 2 or more."
            )
        try:
            loaded = self.load(request.refiner)
        except ModelError as error:
            raise ModelError(f"refiner: {error}") from error
        if loaded.family != "sdxl" or loaded.inpainting_only:
            raise ModelError(f"refiner {request.refiner!r} is not an SDXL refiner or SDXL model; pick one of those.")
        return loaded, self.pipeline(request.refiner, "img2img", refining=True)

    def _loras_folder(self) -> Path:
        if self.loras_dir is None:
            raise lora.LoraError("loras need a LoRA folder; set ATELIER_LORAS_DIR.")
        return self.loras_dir

    def _ip_adapter_weights(self, loaded: LoadedModel) -> ip_adapter.IPAdapterWeights:
        return ip_adapter.find(loaded.family, self.ip_adapter_folders.get(loaded.family))

    def _reference(self, loaded: LoadedModel, pipe: DiffusionPipeline, request: GenerationRequest):
        """Attach the IP-Adapter for a run with a reference image; otherwise make sure none steers it.

        Task pipelines share the UNet, where the adapter lives, so a run
        without a reference detaches it whichever task attached it.
        """
        if request.ip_adapter_image is None:
            ip_adapter.detach(pipe)
            return None
        weights = self._ip_adapter_weights(loaded)
        ip_adapter.attach(pipe, weights, request.ip_adapter_scale)
        return weights

    def run(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        preview: Callable[[Any], None] | None = None,
    ) -> GenerationResult:
        """Run ``request``; ``progress(step, total)`` each step, ``preview(image)`` every few steps when given."""
        with self._lock:
            started = time.perf_counter()
            # 1. Model, its task pipeline (loaded once, then shared) and the task's inputs
            loaded = self.load(request.model)
            task = TaskInputs.of(request)
            pipe = self.pipeline(request.model, request.task, task.controlnets, task.mode)
            # 2. A fresh scheduler for the chosen sampler
            try:
                pipe.scheduler = make_scheduler(request.sampler, loaded.base.scheduler.config)
            except SamplerNotAvailable as error:
                raise ModelError(str(error)) from error
            check_family(loaded.family, request)
            self.switches.tile_vae(pipe.vae, request.width * request.height)
            # LoRAs live on the shared modules: every run sets them, so a run without any has none.
            if request.loras:
                used_loras = lora.apply(pipe, request.loras, self._loras_folder())
                text_loras = lora.text_encoder_key(request.loras, self._loras_folder())
            else:
                lora.clear(pipe)
                used_loras, text_loras = [], ()
            previews = loaded.previews(pipe, preview)
            refiner = self._refiner(request) if request.refiner is not None else None
            reference = self._reference(loaded, pipe, request)
            if reference is not None:
                task.add_reference(request)
            # FLUX's guidance is distilled into the model: no negative pass.
            cfg = loaded.family != "flux" and request.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
            seeds = request.seeds[: request.batch_size]
            images: list[Any] = []
            for index, prompt in enumerate(task.prompts):
                if cancel is not None and cancel.cancelled:
                    break
                # 3. Prompt embeddings, from the cache when the prompt was seen
                embeds = self.text_cache.embeds(
                    pipe,
                    loaded.family,
                    (loaded.source.name, loaded.revision),
                    prompt,
                    request.negative_prompt,
                    cfg=cfg,
                    device=self.device,
                    text_loras=text_loras,
                )
                # 4. One CPU generator per image: same noise on every device, and
                #    image i of a batch equals a single run with seed + i.
                generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
                if request.variation_seeds is not None:
                    task.arguments["latents"] = variation_latents(pipe, request)
                arguments = task.call_arguments(pipe, request)
                stages = Stages(request, progress) if refiner is not None else None
                if refiner is not None:  # the base stops at the switch and hands over its latents
                    arguments.update(denoising_end=request.refiner_switch)
                output = pipe(
                    **embeds,
                    **arguments,
                    generator=generators,
                    callback_on_step_end=on_step_end(
                        stages.base if stages else progress,
                        cancel,
                        index,
                        len(task.prompts),
                        request.num_inference_steps,
                        previews((request.width, request.height)) if previews else None,
                    ),
                    output_type="latent" if refiner is not None else "pil",
                )
                pictures = output.images
                if refiner is not None and not (cancel is not None and cancel.cancelled):
                    stages.handed_over(pipe.num_timesteps)
                    pictures = refine(
                        *refiner,
                        request,
                        prompt,
                        pictures,
                        generators,
                        stages=stages,
                        cancel=cancel,
                        preview=preview,
                        switches=self.switches,
                        text_cache=self.text_cache,
                        device=self.device,
                    )
                # 5. Back to the input's pixels where the task keeps them
                images.extend(task.finish(image) for image in pictures)
            cancelled = cancel is not None and cancel.cancelled
            environment = self.environment()
            if task.controlnets:
                environment["controlnets"] = {name: self.controlnet(name).revision for name in task.controlnets}
            if reference is not None:
                environment["ip_adapter"] = reference.record()
            if used_loras:
                environment["loras"] = used_loras
            if refiner is not None:
                environment["refiner"] = {"source": request.refiner, "revision": refiner[0].revision}
            return GenerationResult(
                images=[] if cancelled else images,
                seeds=request.seeds,
                cancelled=cancelled,
                duration_ms=round((time.perf_counter() - started) * 1000),
                model_revision=loaded.revision,
                environment=environment,
                derived=[] if cancelled else task.derived,
            )
