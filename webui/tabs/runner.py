"""How the four generating tabs run a request: queued for this session, shown as it forms, then its images.

A tab turns its widgets into a request; the runner does the rest the same
way for all four: the progress bar, the job through ``Jobs.follow``, each
newer preview, a cancelled run said once, the outputs' files. The three
image tabs also share their whole Generate handler (``image_task``) and its
event (``wire``); text-to-image runs batches, so it loops over ``follow``
itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any

import gradio as gr
from gradio.events import Dependency

from pipelines.requests import GenerationRequest, RequestError
from storage import Gallery, GenerationRecord
from webui.jobs import Jobs
from webui.models import ModelEntry
from webui.settings import Settings
from webui.tabs import style
from webui.tabs.common import OutputsPanel, model_source, record_details, record_summary


class Runner:
    """The generating tabs' shared services (the session's jobs, the gallery, the model list) and their one run."""

    def __init__(
        self,
        *,
        jobs: Jobs,
        gallery: Gallery,
        models: list[ModelEntry],
        settings: Settings,
        picker: gr.Dropdown | None = None,
    ) -> None:
        self.jobs = jobs
        self.gallery = gallery
        self.models = models
        self.started_with = settings.model
        self.gpu_workers = jobs.workers.count  # `gpu_workers`, or a Ray pool's replicas
        self.picker = picker

    def model_source(self, name: str | None) -> str:
        """The picked model's source; the studio's own model when none is picked (an API client's call)."""
        return model_source(self.models, name, self.started_with)

    def model_input(self) -> gr.components.Component:
        """The model picker as an event's input; a State of None where the page has no picker."""
        return self.picker if self.picker is not None else gr.State(None)

    def follow(
        self,
        generation: GenerationRequest,
        *,
        request: gr.Request,
        progress: Any,
        shown: Callable[[Any], tuple],
        desc: str = "Denoising",
    ) -> Generator[tuple, None, GenerationRecord]:
        """Queue ``generation``, yield ``shown(picture)`` for each newer preview, and return the ended record.

        Use as ``record = yield from runner.follow(...)``. A cancelled run is
        said here, once; its record is kept, as cancelled.
        """
        progress((0, generation.num_inference_steps), desc=desc, unit="steps")
        for kind, value in self.jobs.follow(
            generation,
            request=request,
            progress=lambda step, total: progress((step, total), desc=desc, unit="steps"),
        ):
            if kind == "preview":
                yield shown(value)
        record = value
        if record.status == "cancelled":
            gr.Info(f"Cancelled; record #{record.id} kept as cancelled.")
        return record

    def paths(self, record: GenerationRecord) -> list[str]:
        """The record's output files, for an image gallery."""
        return [str(self.gallery.path(image.path)) for image in record.outputs]

    def image_task(
        self,
        make: Callable[..., GenerationRequest],
        styled: dict[str, Any],
        count: int,
        later: dict[str, tuple[Any, Any]] | None = None,
    ) -> Callable[..., Any]:
        """An image tab's Generate handler: build the request (bad input: one sentence, nothing written), run it."""
        later = later or {}

        def run(*arguments):
            *values, request, progress = arguments
            late = dict(zip(later, values[len(values) - len(later) :], strict=True))
            values = values[: len(values) - len(later)]
            task_values, model_name, style_values = (
                values[: -len(styled) - 1],
                values[-len(styled) - 1],
                values[-len(styled) :],
            )
            try:
                generation = make(*task_values, model=self.model_source(model_name), **late)
                generation = generation.replace(**style.request_fields(**dict(zip(styled, style_values))))
            except (RequestError, ValueError, TypeError) as error:
                raise gr.Error(str(error)) from None
            record = yield from self.follow(
                generation,
                request=request,
                progress=progress,
                shown=lambda picture: ([picture], "Forming…", gr.update()),
            )
            if record.status == "cancelled":
                yield [], f"**Record #{record.id}** · cancelled", record_details(record, inputs=True)
                return
            seconds = record.timings.get("total_ms", 0) / 1000
            yield self.paths(record), record_summary(record, seconds=seconds), record_details(record, inputs=True)

        # Gradio hands the session and a progress bar to parameters it can see in
        # the signature; a *args handler has none, so it is given one per input.
        # The model and the style controls are optional over the API: they keep their names and defaults.
        plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
        optional = inspect.signature(style.request_fields).parameters
        tail = [
            inspect.Parameter("model_name", plain, default=None),
            *(inspect.Parameter(name, plain, default=optional[name].default) for name in styled),
            *(inspect.Parameter(name, plain, default=default) for name, (_, default) in later.items()),
        ]
        positional = [inspect.Parameter(f"value_{i}", plain) for i in range(count - len(tail))]
        run.__signature__ = inspect.Signature(
            [
                *positional,
                *tail,
                inspect.Parameter("request", plain, default=None, annotation=gr.Request),
                inspect.Parameter("progress", plain, default=gr.Progress()),
            ]
        )
        run.__annotations__ = {"request": gr.Request}  # Gradio reads type hints, not the signature's annotations
        return run

    def wire(
        self,
        panel: OutputsPanel,
        inputs: list,
        make: Callable[..., GenerationRequest],
        api_name: str,
        styled: dict[str, Any] | None = None,
        later: dict[str, tuple[Any, Any]] | None = None,
    ) -> Dependency:
        """Generate runs ``make``'s request with the tab's style controls; API inputs: the tab's, the model, style's.

        Inputs added later go last, so an API client's positional call keeps working: ``later``
        maps a ``make`` keyword to its widget and the default an API call that leaves it out gets.
        """
        styled = styled or {}
        later = later or {}
        # An API client may leave the model out (the studio's own model) and the style controls (none).
        inputs = [*inputs, self.model_input(), *styled.values(), *(widget for widget, _ in later.values())]
        event = gr.on(
            [panel.run.click],
            self.image_task(make, styled, len(inputs), later),
            inputs=inputs,
            outputs=[panel.images, panel.summary, panel.details],
            api_name=api_name,
            concurrency_id="gpu",
            concurrency_limit=self.gpu_workers,
        )
        panel.cancel.click(self.jobs.cancel, api_visibility="private")
        return event
