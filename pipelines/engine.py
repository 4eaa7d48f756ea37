"""The engine: load a model once, derive every task's pipeline, run requests.

What it owns, and why here:
- model sources (embedded, local diffusers folder, hub id, single .safetensors)
  and a revision for each, so a record says which weights made an image;
- device and dtype, picked once;
- one base pipeline per model; the other tasks' pipelines come from
  ``from_pipe`` and share its modules (no second copy of the weights), and
  ControlNets join that base the same way (each loaded once);
- each task's inputs: init images resized by the request's mode, product
  masks grown and pasted back so kept pixels stay exact, control images
  made by the preprocessors;
- the sampler (a fresh scheduler per run), seeding through CPU generators so a
  seed means the same noise on every device, the text-embedding cache,
  per-step progress and cooperative cancel.

It knows nothing of Gradio or the database (see docs/architecture.md).
"""

from __future__ import annotations

import inspect
import platform
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
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from pipelines import ip_adapter, lora, masks, preprocessors
from pipelines.devices import Switches, pick_device, pick_dtype
from pipelines.errors import ModelError, check_family
from pipelines.images import resize_to
from pipelines.loaders import LoadedControlNet, LoadedModel, controlnet_fits, load_controlnet, load_model
from pipelines.progress import CancelToken, ProgressFn, on_step_end
from pipelines.prompt_cache import TextEmbeddingCache
from pipelines.requests import ControlNetRequest, GenerationRequest, Img2ImgRequest, InpaintRequest
from pipelines.samplers import SamplerNotAvailable, make_scheduler
from pipelines.sources import resolve_source

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

    def pipeline(self, model: str, task: str, controlnet_names: tuple[str, ...] = (), mode: str = "txt2img",
                 *, refining: bool = False) -> DiffusionPipeline:
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
            raise ModelError("a refiner needs room for two models (the base and the refiner); set ATELIER_MAX_MODELS to 2 or more.")
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

    def _refine(self, refiner: tuple[LoadedModel, DiffusionPipeline], request: GenerationRequest, prompt: str,
                latents: torch.Tensor, generators: list[torch.Generator], stages: _Stages, cancel: CancelToken | None,
                preview: Callable[[Any], None] | None) -> list[Any]:
        """Finish the base's latents with the refiner from ``refiner_switch`` on; the same generators go on."""
        loaded, pipe = refiner
        # The LoRAs and the reference image are the base's: a model used as a refiner runs as itself,
        # whatever an earlier run of it as a base left attached.
        lora.clear(pipe)
        ip_adapter.detach(pipe)
        pipe.scheduler = make_scheduler(request.sampler, loaded.base.scheduler.config)
        self.switches.tile_vae(pipe.vae, request.width * request.height)
        previews = loaded.previews(pipe, preview)
        cfg = request.guidance_scale > 1
        output = pipe(
            **self.text_cache.embeds(pipe, loaded.family, (loaded.source.name, loaded.revision), prompt,
                                     request.negative_prompt, cfg=cfg, device=self.device),
            image=latents,
            num_inference_steps=request.num_inference_steps,
            denoising_start=request.refiner_switch,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.batch_size,
            generator=generators,
            callback_on_step_end=on_step_end(stages.refiner, cancel, 0, 1, request.num_inference_steps,
                                             previews((request.width, request.height)) if previews else None),
            output_type="pil",
        )
        return output.images

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
            task = _TaskInputs.of(request)
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
                task.arguments["ip_adapter_image"] = _rgb(_pixels(request.ip_adapter_image, "ip_adapter_image"))
            # FLUX's guidance is distilled into the model: no negative pass.
            cfg = loaded.family != "flux" and request.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
            seeds = request.seeds[: request.batch_size]
            images: list[Any] = []
            for index, prompt in enumerate(task.prompts):
                if cancel is not None and cancel.cancelled:
                    break
                # 3. Prompt embeddings, from the cache when the prompt was seen
                embeds = self.text_cache.embeds(pipe, loaded.family, (loaded.source.name, loaded.revision), prompt,
                                                request.negative_prompt, cfg=cfg, device=self.device, text_loras=text_loras)
                # 4. One CPU generator per image: same noise on every device, and
                #    image i of a batch equals a single run with seed + i.
                generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
                if request.variation_seeds is not None:
                    task.arguments["latents"] = _variation_latents(pipe, request)
                arguments = _fit_arguments(pipe, request, {**request.pipeline_arguments(), **task.arguments})
                stages = _Stages(request, progress) if refiner is not None else None
                if refiner is not None:  # the base stops at the switch and hands over its latents
                    arguments.update(denoising_end=request.refiner_switch)
                output = pipe(
                    **embeds,
                    **arguments,
                    generator=generators,
                    callback_on_step_end=on_step_end(stages.base if stages else progress, cancel, index,
                                                     len(task.prompts), request.num_inference_steps,
                                                     previews((request.width, request.height)) if previews else None),
                    output_type="latent" if refiner is not None else "pil",
                )
                pictures = output.images
                if refiner is not None and not (cancel is not None and cancel.cancelled):
                    stages.handed_over(pipe.num_timesteps)
                    pictures = self._refine(refiner, request, prompt, pictures, generators, stages, cancel, preview)
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


class _Stages:
    """One progress bar over a base and its refiner: the refiner's steps continue the base's.

    Both denoise parts of one schedule: text-to-image's ``num_inference_steps``
    steps, image-to-image's share of them for its strength (diffusers' count).
    """

    def __init__(self, request: GenerationRequest, progress: ProgressFn | None) -> None:
        steps = request.num_inference_steps
        strength = getattr(request, "strength", None)
        self.total = steps if strength is None else max(1, min(int(steps * strength), steps))
        self.progress = progress
        self.done_by_base = 0

    def base(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(min(done, self.total), self.total)

    def handed_over(self, base_steps: int) -> None:
        self.done_by_base = base_steps

    def refiner(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.total = max(self.total, self.done_by_base + total)
            self.progress(self.done_by_base + done, self.total)


def _fit_arguments(pipe: DiffusionPipeline, request: GenerationRequest, arguments: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments in this pipeline's own names.

    FLUX's text-to-image ControlNet takes ``control_image`` where Stable
    Diffusion's takes ``image``, and FLUX's image-to-image needs the size that
    Stable Diffusion's takes from the image.
    """
    accepted = inspect.signature(pipe.__call__).parameters
    if "image" in arguments and "image" not in accepted and "control_image" in accepted:
        arguments["control_image"] = arguments.pop("image")
    for name in ("height", "width"):
        if name in accepted and name not in arguments:
            arguments[name] = getattr(request, name)
    return arguments


def _slerp(low: torch.Tensor, high: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: the blend of two Gaussian noises stays as loud as each of them."""
    a, b = low.flatten(), high.flatten()
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * low + t * high
    return (torch.sin((1 - t) * omega) * low + torch.sin(t * omega) * high) / torch.sin(omega)


def _variation_latents(pipe: DiffusionPipeline, request: GenerationRequest) -> torch.Tensor:
    """Starting noise per image: seed + i's noise blended towards variation_seed + i's.

    Each noise is drawn as the pipeline would draw it (one CPU generator per
    image, the latent shape of one image; FLUX's then packed into its 2x2
    patches), so strength 0 is the seed's own image and strength 1 the
    variation seed's.
    """
    factor = pipe.vae_scale_factor
    flux = getattr(pipe, "transformer", None) is not None
    if flux:  # FLUX's latent sides are even: they are packed in 2x2 patches
        channels = pipe.transformer.config.in_channels // 4
        height, width = (2 * (side // (factor * 2)) for side in (request.height, request.width))
    else:
        channels = pipe.unet.config.in_channels
        height, width = request.height // factor, request.width // factor
    shape = (1, channels, height, width)

    def noise(seed: int) -> torch.Tensor:
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)

    blended = torch.cat([
        _slerp(noise(seed), noise(other), request.variation_strength)
        for seed, other in zip(request.seeds, request.variation_seeds)
    ])
    if flux:
        blended = pipe._pack_latents(blended, len(request.seeds), channels, height, width)
    denoiser = pipe.transformer if flux else pipe.unet
    return blended.to(pipe.device, denoiser.dtype)


# Inpainting through a ControlNet pastes back with this seam (its request has no feather field).
CONTROLNET_INPAINT_FEATHER = 4


@dataclass
class _TaskInputs:
    """What a request adds to the pipeline call, and what happens to each image after it."""

    mode: str = "txt2img"
    prompts: list[str] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    controlnets: tuple[str, ...] = ()
    derived: list[tuple[str, Any]] = field(default_factory=list)
    finish: Callable[[Any], Any] = lambda image: image

    @classmethod
    def of(cls, request: GenerationRequest) -> _TaskInputs:
        if isinstance(request, Img2ImgRequest):
            return cls._img2img(request)
        if isinstance(request, InpaintRequest):
            return cls._inpaint(request)
        if isinstance(request, ControlNetRequest):
            return cls._controlnet(request)
        return cls(prompts=[request.prompt])

    @classmethod
    def _img2img(cls, request: Img2ImgRequest) -> _TaskInputs:
        image = resize_to(_rgb(_pixels(request.image, "image")), request.width, request.height, request.resize_mode)
        return cls(prompts=[request.prompt], arguments={"image": image})

    @classmethod
    def _inpaint(cls, request: InpaintRequest) -> _TaskInputs:
        original = _pixels(request.image, "image")
        region = masks.adjust(_pixels(request.mask_image, "mask_image"), request.mask_grow)
        size = (request.width, request.height)
        arguments = {
            "image": _rgb(original).resize(size, Image.Resampling.LANCZOS),
            "mask_image": region.resize(size, Image.Resampling.NEAREST),
        }
        return cls(
            mode="inpaint",
            prompts=request.prompts,
            arguments=arguments,
            finish=lambda image: masks.paste_back(original, image, region, feather=request.mask_feather),
        )

    @classmethod
    def _controlnet(cls, request: ControlNetRequest) -> _TaskInputs:
        size = (request.width, request.height)
        controls = [
            resize_to(
                preprocessors.run(unit.preprocessor, _rgb(_pixels(unit.image, "control image")), **unit.preprocessor_params),
                *size,
                request.resize_mode,
            )
            for unit in request.controls
        ]
        single = len(controls) == 1
        control = controls[0] if single else controls
        arguments = request.pipeline_arguments()
        if single:  # one ControlNet takes plain numbers, several take lists
            overrides = {key: arguments[key][0] for key in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")}
        else:
            overrides = {}
        task = cls(
            mode=request.mode,
            prompts=[request.prompt],
            controlnets=tuple(unit.controlnet for unit in request.controls),
            derived=[("control", image) for image in controls],
        )
        if request.mode == "txt2img":
            task.arguments = {"image": control, **overrides}
            return task
        original = _pixels(request.image, "image")
        task.arguments = {"image": resize_to(_rgb(original), *size, request.resize_mode), "control_image": control, **overrides}
        if request.mode == "inpaint":
            region = _pixels(request.mask_image, "mask_image")
            task.arguments["mask_image"] = resize_to(region, *size, request.resize_mode)
            task.finish = lambda image: masks.paste_back(original, image, region, feather=CONTROLNET_INPAINT_FEATHER)
        return task


def _pixels(ref, name: str) -> Any:
    if ref.image is None:
        raise ModelError(f"{name} has no pixels; a stored request needs its images from the gallery to run.")
    return ref.image


def _rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")
