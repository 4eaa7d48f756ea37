"""The studio service: request -> engine -> gallery, the one path for a generation.

The Gradio UI, the CLI and the HTTP API all go through ``Studio``; none of
them talks to the engine or the store directly. The CLI runs a request at once
(``submit``, ``rerun``); the UI queues it (``enqueue``) for the GPU workers of
``webui/workers.py``, which run it with ``run_job``.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipelines.adherence import Adherence, AdherenceScorer
from pipelines.errors import ModelError, check_family
from pipelines.progress import CancelToken, ProgressFn
from pipelines.requests import GenerationRequest, RequestError, pixel_hash, request_from_dict
from pipelines.sources import resolve_source
from storage import Gallery, GenerationRecord, ImageInput, NewGeneration, StorageError
from webui.errors import GpuWorkerLost, GpuWorkersUnreachable, QueueFull, StudioError
from webui.executors import RayExecutor
from webui.models import ModelListError, find, guess_family, studio_models
from webui.settings import Settings
from webui.workers import Workers

if TYPE_CHECKING:  # the engine module imports torch; the page should not wait for it
    from pipelines.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerunOutcome:
    record: GenerationRecord
    parent: GenerationRecord
    identical: bool  # every output's sha256 equals the parent's, in order
    differences: list[str] = field(default_factory=list)  # why not, when known


def _elapsed_ms(since: float) -> int:
    return round((time.perf_counter() - since) * 1000)


def explain_difference(parent: GenerationRecord, child: GenerationRecord) -> list[str]:
    """Reasons a rerun may not match: what differs in the environment or weights."""
    reasons = []
    if parent.model_revision != child.model_revision:
        reasons.append(f"model weights changed ({parent.model_revision} -> {child.model_revision})")
    for key in sorted(set(parent.environment) | set(child.environment)):
        before, after = parent.environment.get(key), child.environment.get(key)
        if before != after:
            reasons.append(f"{key} changed ({before} -> {after})")
    return reasons


OUT_OF_MEMORY = "Out of GPU memory; try a smaller size or batch."


class Studio:
    """Runs requests for users and keeps every result in the gallery.

    Two ways in, one way through: `submit` runs a request at once in the
    caller's thread (the CLI); `enqueue` records it as a queued job, with its
    input images, for a GPU worker (webui/workers.py) to claim and hand to
    `run_job` (the UI). Both end in `_run`: engine, then files and rows.
    """

    def __init__(self, *, settings: Settings, gallery: Gallery, engine: Engine | None = None) -> None:
        self.settings = settings
        self.gallery = gallery
        self._engine = engine
        self._owns_engine = engine is None
        self._engine_lock = threading.Lock()
        self._enqueue_lock = threading.Lock()  # the queue limit's count and the insert, as one step
        self._workers_lock = threading.Lock()
        self._workers: Workers | None = None
        self.scorer = AdherenceScorer(clip_model=settings.adherence_model, device=settings.device)

    @classmethod
    def from_settings(cls, settings: Settings) -> Studio:
        """A studio on a gallery of its own, for a script or a test that needs no accounts.

        A process builds all its services at once with webui.services.build_services,
        where the gallery and the accounts share one database.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        gallery = Gallery(url=settings.gallery_url, data_dir=settings.data_dir, lease_seconds=settings.lease_seconds)
        return cls(settings=settings, gallery=gallery)

    @property
    def engine(self) -> Engine | RayExecutor:
        """The executor: the engine in this process, or the Ray pool (`settings.executor`); made on first use.

        Importing torch and diffusers takes seconds; the studio's page and the
        gallery need neither, so they come up without waiting for them.
        """
        with self._engine_lock:
            if self._engine is None and self.settings.executor == "ray":
                self._engine = RayExecutor.from_settings(self.settings)
            if self._engine is None:
                from pipelines.engine import Engine

                settings = self.settings
                self._engine = Engine(
                    device=settings.device or None,
                    dtype=settings.dtype or None,
                    text_cache_size=settings.text_cache_size,
                    max_models=settings.max_models,
                    switches=settings.switches(),
                    loras_dir=settings.loras_folder,
                    ip_adapter_folders={
                        family: folder
                        for family, folder in (("sd", settings.ip_adapter_sd15), ("sdxl", settings.ip_adapter_sdxl))
                        if folder
                    },
                )
            return self._engine

    @property
    def workers(self) -> Workers:
        """The GPU workers that run queued jobs (`settings.gpu_workers` threads); made on first use, not started.

        They are handed the calls they make, the studio's and the gallery's,
        not the studio: webui/workers.py imports nothing of this module.
        """
        with self._workers_lock:
            if self._workers is None:
                gallery = self.gallery
                # A Ray pool runs as many jobs at once as it has replicas; the engine here, `gpu_workers`.
                pool = self.engine if self.pooled else None
                count = pool.capacity if isinstance(pool, RayExecutor) else self.settings.gpu_workers
                self._workers = Workers(
                    count=count,
                    enqueue=self.enqueue,
                    run=self.run_job,
                    claim=gallery.claim_next,
                    queued=gallery.queued,
                    cancel=gallery.cancel,
                    blocked=self.gpu_status,
                )
            return self._workers

    def close(self) -> None:
        with self._workers_lock:
            workers = self._workers
        if workers is not None:
            workers.close()
        if isinstance(self._engine, RayExecutor) and self._owns_engine:  # a pool handed in is its giver's to close
            self._engine.close()
        self.gallery.close()

    @property
    def pooled(self) -> bool:
        """Whether jobs run on a Ray pool (`settings.executor`, or a pool handed in); asks nothing of it."""
        return self.settings.executor == "ray" or isinstance(self._engine, RayExecutor)

    def gpu_status(self, *, wait: bool = True) -> str | None:
        """Why no job can run now ("No GPU workers reachable: ..."), for the UI; None when they can.

        Always None with the engine in this process. With `wait` False (the
        page's status line) a connection under way elsewhere is not waited for.
        """
        if not self.pooled:
            return None
        executor = self.engine
        if not isinstance(executor, RayExecutor):
            return None
        return None if executor.reachable(wait=wait) else executor.status()

    def submit(
        self,
        request: GenerationRequest,
        *,
        user: str,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        parent_id: int | None = None,
    ) -> GenerationRecord:
        """Run a request now, in this thread, without waiting in the queue (the CLI's way)."""
        started = time.perf_counter()
        # 1. Load the model and check the request against it before writing
        #    anything: bad input (a model, LoRA or reference it cannot use) leaves no record.
        loaded = self.engine.check(request)
        load_ms = _elapsed_ms(started)
        # 2. The record exists, "running", while the engine works.
        record = self.gallery.start(_new_generation(request, user=user, revision=loaded.revision, parent_id=parent_id))
        # 3. Generate and store; the inputs land with the outputs, so a rerun needs nothing but the record.
        inputs = [ImageInput(role=role, image=ref.image) for role, ref in request.input_images]
        return self._run(
            record,
            request,
            inputs=inputs,
            revision=None,
            timings={"load_ms": load_ms},
            started=started,
            progress=progress,
            cancel=cancel,
        )

    def enqueue(self, request: GenerationRequest, *, user: str, parent_id: int | None = None) -> GenerationRecord:
        """Record a request as a queued job, with its input images; a GPU worker runs it when its turn comes.

        Raises ModelError for a model name that points nowhere and QueueFull
        when `settings.queue_limit` jobs wait already, or
        `settings.queue_limit_per_user` of this user's; either way nothing is
        written.
        """
        # 1. Check before writing: the model must exist (loading it waits for
        #    the GPU, so only its source is checked here), what the run would
        #    refuse is refused now, and the queue must have room.
        resolve_source(request.model)
        self._precheck(request)
        inputs = [ImageInput(role=role, image=ref.image) for role, ref in request.input_images]
        new = _new_generation(request, user=user, revision=None, parent_id=parent_id)
        with self._enqueue_lock:
            waiting = self.gallery.count(status="queued")
            if waiting >= self.settings.queue_limit:
                raise QueueFull(f"The queue is full ({waiting} jobs waiting); try again in a minute.")
            mine = self.gallery.count(status="queued", user=user)
            if mine >= self.settings.queue_limit_per_user:
                raise QueueFull(
                    f"You have {mine} jobs waiting, the most one person may queue; try again when one has run."
                )
            # 2. The row and its inputs land together, or not at all.
            try:
                return self.gallery.enqueue(new, inputs=inputs)
            except OSError as error:
                raise StudioError(_not_stored("queue the request", error)) from error

    def _precheck(self, request: GenerationRequest) -> None:
        """Refuse, without loading the model, what the run would refuse: the queue then holds only runnable jobs.

        Prompt weights, LoRA files, the model family's limits (a FLUX model
        takes no negative prompt, only SDXL takes a refiner), the refiner's
        source and IP-Adapter weights for a reference image. The family is
        the loaded model's, else the model list's, else a guess from the
        name; the engine checks the real one when it runs.
        """
        from pipelines import ip_adapter, lora, prompts

        texts = getattr(request, "prompts", None) or [request.prompt]
        for text in texts:
            prompts.check(text, "prompt")
        prompts.check(request.negative_prompt, "negative_prompt")
        if request.loras:
            lora.resolve(request.loras, self.settings.loras_folder)
        family = self._family(request.model)
        check_family(family, request)
        if request.refiner is not None:
            try:
                resolve_source(request.refiner)
            except ModelError as error:
                raise ModelError(f"refiner: {error}") from error
        if request.ip_adapter_image is not None:
            folders = {"sd": self.settings.ip_adapter_sd15, "sdxl": self.settings.ip_adapter_sdxl}
            ip_adapter.find(family, folders.get(family) or None)

    def _family(self, model: str) -> str:
        known = self._engine.family_of(model) if self._engine is not None else None
        if known is not None:
            return known
        try:
            entry = find(studio_models(self.settings), model)
        except ModelListError:  # the picker says what is wrong with the list; a guess will do here
            entry = None
        family = entry.family if entry is not None else guess_family(model)
        return "sd" if family == "embedded" else family

    def run_job(
        self,
        record: GenerationRecord,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        preview: Callable[[Any], None] | None = None,
    ) -> GenerationRecord:
        """Run a job a worker claimed (status "running"), and end it: succeeded, failed or cancelled.

        Its request is rebuilt from the record, inputs and all, the way a
        rerun is. A model that cannot load or a stored request that no longer
        validates ends the job "failed" with that message, and is raised. A
        GPU pool out of reach puts the job back in the queue (raised too).
        """
        started = time.perf_counter()
        # 1. The request and its model; either failing is the job's end, not the worker's.
        try:
            request = request_from_dict(record.params, self.stored_inputs(record))
            loaded = self.engine.load(request.model)
        except GpuWorkersUnreachable:  # nothing ran: it waits its turn again, and runs when the pool is back
            self.gallery.release(record.id)
            raise
        except (ModelError, RequestError, OSError) as error:
            message = str(error) if not isinstance(error, OSError) else f"its input images could not be read: {error}"
            self._end_failed(record, message, started=started)
            raise
        # 2. Generate and store; its inputs are in the record already.
        waited_ms = None
        if record.started_at is not None:
            waited_ms = max(0, round((record.started_at - record.created_at).total_seconds() * 1000))
        timings = {"wait_ms": waited_ms, "load_ms": _elapsed_ms(started)}
        return self._run(
            record,
            request,
            inputs=[],
            revision=loaded.revision,
            timings=timings,
            started=started,
            progress=progress,
            cancel=cancel,
            preview=preview,
        )

    def _run(
        self,
        record: GenerationRecord,
        request: GenerationRequest,
        *,
        inputs: list[ImageInput],
        revision: str | None,
        timings: dict[str, Any],
        started: float,
        progress: ProgressFn | None,
        cancel: CancelToken | None,
        preview: Callable[[Any], None] | None = None,
    ) -> GenerationRecord:
        """Run a recorded generation and end its record; `revision` is recorded at the end (queued jobs)."""
        # 1. Generate; a failure or a cancel is recorded as such, never as a result.
        try:
            result = self.engine.run(request, progress=progress, cancel=cancel, preview=preview)
        except BaseException as error:
            # Ctrl-C in the CLI is the user stopping the run, not a fault.
            stopped = isinstance(error, KeyboardInterrupt)
            out_of_memory = _out_of_memory(error)
            if out_of_memory:
                # What the failed run left cached must not make the next one fail too.
                self._free_memory()
            if isinstance(error, GpuWorkersUnreachable):  # the pool went away before the job reached it
                self.gallery.release(record.id)
                raise
            if isinstance(error, GpuWorkerLost):  # not the job's fault: it may run again as it was
                self.gallery.interrupt(
                    record.id,
                    error=str(error),
                    environment=self.engine.environment(),
                    timings={**timings, "total_ms": _elapsed_ms(started)},
                )
                raise
            self.gallery.fail(
                record.id,
                status="cancelled" if stopped else "failed",
                error=None if stopped else OUT_OF_MEMORY if out_of_memory else f"{type(error).__name__}: {error}",
                environment=self.engine.environment(),
                timings={**timings, "total_ms": _elapsed_ms(started)},
                duration_ms=None,
                model_revision=revision,
            )
            if out_of_memory:
                raise StudioError(OUT_OF_MEMORY) from error
            raise
        timings["run_ms"] = result.duration_ms
        if result.cancelled:
            timings["total_ms"] = _elapsed_ms(started)
            return self.gallery.fail(
                record.id,
                status="cancelled",
                error=None,
                environment=result.environment,
                timings=timings,
                duration_ms=result.duration_ms,
                model_revision=revision,
            )
        # 2. How well the outputs follow the prompt, scored here, by the worker that ran the job.
        adherence = self._score(request, result.images, timings)
        # 3. Files and rows land together: the inputs not stored yet, what the
        #    engine made from them (control maps), and the outputs.
        images = [*inputs, *(ImageInput(role=role, image=image) for role, image in result.derived)]
        images += [
            ImageInput(role="output", image=image, seed=seed)
            for image, seed in zip(result.images, result.seeds, strict=True)
        ]
        timings["total_ms"] = _elapsed_ms(started)
        try:
            return self.gallery.finish(
                record.id,
                images=images,
                environment=result.environment,
                timings=timings,
                duration_ms=result.duration_ms,
                model_revision=revision,
                adherence=adherence.to_dict(),
            )
        except OSError as error:
            # A full or read-only data folder: storage wrote nothing (files.py), so
            # the record says why, if the database can still take that much.
            message = _not_stored("store the images", error)
            try:
                self.gallery.fail(
                    record.id,
                    status="failed",
                    error=message,
                    environment=result.environment,
                    timings=timings,
                    duration_ms=result.duration_ms,
                    model_revision=revision,
                )
            except (OSError, StorageError):
                log.exception(
                    "Could not record generation %s as failed; it reads as interrupted after its lease.", record.id
                )
            raise StudioError(message) from error

    def _score(self, request: GenerationRequest, images: list[Any], timings: dict[str, Any]) -> Adherence:
        """The outputs' prompt adherence; a CLIP model that will not load leaves them unscored, saying why."""
        started = time.perf_counter()
        texts = getattr(request, "prompts", None) or [request.prompt]
        # Several prompt lines (inpaint) give batch_size images each, in order.
        prompts = [texts[min(i // request.batch_size, len(texts) - 1)] for i in range(len(images))]
        try:
            adherence = self.scorer.score(model=request.model, prompts=prompts, images=images)
        except ModelError as error:
            log.warning("Prompt adherence not scored: %s", error)
            adherence = Adherence(score=None, method=None, reason=str(error))
        timings["adherence_ms"] = _elapsed_ms(started)
        return adherence

    def _end_failed(self, record: GenerationRecord, message: str, *, started: float) -> None:
        environment = self._engine.environment() if self._engine is not None else {}
        self.gallery.fail(
            record.id,
            status="failed",
            error=message,
            environment=environment,
            timings={"total_ms": _elapsed_ms(started)},
            duration_ms=None,
        )

    def _free_memory(self) -> None:
        """Drop what the engine keeps between runs, so the memory a failed run held can be used again."""
        self.engine.free_memory()

    def rerun(
        self,
        record_id: int,
        *,
        user: str,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **changes: Any,
    ) -> RerunOutcome:
        """Run a stored request again (optionally with fields changed), as its child, now."""
        parent, request = self.rerun_request(record_id, **changes)
        record = self.submit(request, user=user, progress=progress, cancel=cancel, parent_id=parent.id)
        return self.compare(parent, record)

    def rerun_request(self, record_id: int, **changes: Any) -> tuple[GenerationRecord, GenerationRequest]:
        """A stored generation and its request, with its input images, and with `changes` applied."""
        parent = self.gallery.get(record_id)
        request = request_from_dict(parent.params, self.stored_inputs(parent))
        if changes:
            request = request.replace(**changes)
        return parent, request

    @staticmethod
    def compare(parent: GenerationRecord, record: GenerationRecord) -> RerunOutcome:
        """Whether a rerun reproduced its parent, and if not, what is known to differ."""
        identical = record.status == "succeeded" and [i.sha256 for i in record.outputs] == [
            i.sha256 for i in parent.outputs
        ]
        differences = [] if identical else explain_difference(parent, record)
        return RerunOutcome(record=record, parent=parent, identical=identical, differences=differences)

    def stored_inputs(self, record: GenerationRecord) -> dict[str, Image.Image]:
        """The record's input images by pixel hash, as its stored request names them."""
        inputs = {}
        for stored in record.images:
            if stored.role != "output":
                with Image.open(self.gallery.path(stored.path)) as file:
                    file.load()
                    image = file.copy()
                inputs[pixel_hash(image)] = image
        return inputs


def _out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def _not_stored(what: str, error: OSError) -> str:
    reason = {
        errno.ENOSPC: "is full",
        errno.EDQUOT: "is over its quota",
        errno.EROFS: "is read-only",
        errno.EACCES: "is not writable",
        errno.EPERM: "is not writable",
    }.get(error.errno, "could not be written")
    return (
        f"Could not {what}: the data folder {reason} ({error.strerror or error}); nothing was kept. "
        "Free some space or fix the folder's permissions, then run it again."
    )


def _new_generation(
    request: GenerationRequest, *, user: str, revision: str | None, parent_id: int | None
) -> NewGeneration:
    return NewGeneration(
        user=user,
        task=request.task,
        model=request.model,
        model_revision=revision,
        params=request.to_dict(),
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        sampler=request.sampler,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        width=request.width,
        height=request.height,
        batch_size=request.batch_size,
        parent_id=parent_id,
    )
