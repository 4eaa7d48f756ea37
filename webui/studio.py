"""The studio service: request -> engine -> gallery, the one path for a generation.

The Gradio UI, the CLI and the HTTP API all call ``Studio.submit`` and
``Studio.rerun``; none of them talks to the engine or the store directly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipelines.requests import GenerationRequest, pixel_hash, request_from_dict
from storage import Gallery, GenerationRecord, ImageInput, NewGeneration
from webui.settings import Settings

if TYPE_CHECKING:  # the engine module imports torch; the page should not wait for it
    from pipelines.engine import CancelToken, Engine, ProgressFn


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


class Studio:
    """Runs requests for users and keeps every result in the gallery."""

    def __init__(self, *, settings: Settings, gallery: Gallery, engine: Engine | None = None) -> None:
        self.settings = settings
        self.gallery = gallery
        self._engine = engine
        self._engine_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Studio:
        """Wire the services once, at start-up."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings=settings, gallery=Gallery(url=settings.gallery_url, data_dir=settings.data_dir))

    @property
    def engine(self) -> Engine:
        """The engine, made on first use.

        Importing torch and diffusers takes seconds; the studio's page and the
        gallery need neither, so they come up without waiting for them.
        """
        with self._engine_lock:
            if self._engine is None:
                from pipelines.engine import Engine

                self._engine = Engine(
                    device=self.settings.device or None,
                    dtype=self.settings.dtype or None,
                    text_cache_size=self.settings.text_cache_size,
                )
            return self._engine

    def close(self) -> None:
        self.gallery.close()

    def submit(
        self,
        request: GenerationRequest,
        *,
        user: str,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        parent_id: int | None = None,
    ) -> GenerationRecord:
        started = time.perf_counter()
        # 1. Load the model before writing anything: a model that cannot be
        #    found is bad input, and bad input leaves no record.
        loaded = self.engine.load(request.model)
        load_ms = _elapsed_ms(started)
        # 2. The record exists, "running", while the engine works.
        record = self.gallery.start(_new_generation(request, user=user, revision=loaded.revision, parent_id=parent_id))
        # 3. Generate; a failure or a cancel is recorded as such, never as a result.
        try:
            result = self.engine.run(request, progress=progress, cancel=cancel)
        except BaseException as error:
            # Ctrl-C in the CLI is the user stopping the run, not a fault.
            stopped = isinstance(error, KeyboardInterrupt)
            self.gallery.fail(
                record.id,
                status="cancelled" if stopped else "failed",
                error=None if stopped else f"{type(error).__name__}: {error}",
                environment=self.engine.environment(),
                timings={"load_ms": load_ms, "total_ms": _elapsed_ms(started)},
                duration_ms=None,
            )
            raise
        timings = {"load_ms": load_ms, "run_ms": result.duration_ms}
        if result.cancelled:
            timings["total_ms"] = _elapsed_ms(started)
            return self.gallery.fail(
                record.id,
                status="cancelled",
                error=None,
                environment=result.environment,
                timings=timings,
                duration_ms=result.duration_ms,
            )
        # 4. Files and rows land together: the inputs (so a rerun needs
        #    nothing but the record), what the engine made from them (control
        #    maps), and the outputs.
        images = [ImageInput(role=role, image=ref.image) for role, ref in request.input_images]
        images += [ImageInput(role=role, image=image) for role, image in result.derived]
        images += [ImageInput(role="output", image=image, seed=seed) for image, seed in zip(result.images, result.seeds, strict=True)]
        timings["total_ms"] = _elapsed_ms(started)
        return self.gallery.finish(
            record.id, images=images, environment=result.environment, timings=timings, duration_ms=result.duration_ms
        )

    def rerun(
        self,
        record_id: int,
        *,
        user: str,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **changes: Any,
    ) -> RerunOutcome:
        """Run a stored request again (optionally with fields changed), as its child."""
        parent = self.gallery.get(record_id)
        request = request_from_dict(parent.params, self.stored_inputs(parent))
        if changes:
            request = request.replace(**changes)
        record = self.submit(request, user=user, progress=progress, cancel=cancel, parent_id=parent.id)
        identical = record.status == "succeeded" and [i.sha256 for i in record.outputs] == [i.sha256 for i in parent.outputs]
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


def _new_generation(request: GenerationRequest, *, user: str, revision: str, parent_id: int | None) -> NewGeneration:
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
