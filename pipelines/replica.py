"""One engine per GPU, as a Ray Serve deployment: the pool the studio's ``ray`` executor sends jobs to.

What it hides: how an `Engine` runs inside a Serve replica. Each replica
holds one engine on one device (``num_gpus=1``, or CPUs for a CPU-only
pool) and runs one job at a time (``max_ongoing_requests=1``), so a pool of
N replicas is N GPUs' worth of concurrency. Models are multiplexed by their
source (``@serve.multiplexed``): the caller names the model in
``multiplexed_model_id`` and Serve prefers a replica that already holds it.

A job is one streaming call, `generate`: its request travels as
``request.to_dict()`` plus its input images as PNG bytes keyed by pixel hash
(the ``request_from_dict`` round trip a rerun uses), and what comes back is a
stream of plain dicts, in order: ``started`` (the replica's environment and
the model's revision), ``step`` and ``preview`` (PNG bytes) as they happen,
then ``result`` (images as PNG bytes, lossless, so the studio stores the same
pixels the engine made). When the caller cancels the stream, Serve raises
CancelledError (or closes the generator) here; that sets the engine's
CancelToken, so the engine stops at its next step, as it does locally.

The studio's side, and everything about queues, rows and files, is in
webui/executors.py; this module knows nothing of either.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from ray import serve

from pipelines.devices import Switches
from pipelines.engine import Engine, GenerationResult
from pipelines.progress import CancelToken
from pipelines.requests import request_from_dict

log = logging.getLogger(__name__)

APP_NAME = "atelier"
DEPLOYMENT_NAME = "AtelierReplica"


def png_bytes(image: Image.Image) -> bytes:
    """Lossless bytes for an image on the wire (PNG keeps every pixel and the mode)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: it only crosses the network once
    return buffer.getvalue()


def from_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as file:
        file.load()
        return file.copy()


def result_event(result: GenerationResult) -> dict[str, Any]:
    """A finished run as plain values: what `generate` yields last."""
    return {
        "event": "result",
        "images": [png_bytes(image) for image in result.images],
        "seeds": list(result.seeds),
        "cancelled": result.cancelled,
        "duration_ms": result.duration_ms,
        "model_revision": result.model_revision,
        "environment": result.environment,
        "derived": [(role, png_bytes(image)) for role, image in result.derived],
    }


def result_from_event(event: dict[str, Any]) -> GenerationResult:
    """The `GenerationResult` a ``result`` event carries, its images decoded."""
    return GenerationResult(
        images=[from_png(data) for data in event["images"]],
        seeds=list(event["seeds"]),
        cancelled=event["cancelled"],
        duration_ms=event["duration_ms"],
        model_revision=event["model_revision"],
        environment=dict(event["environment"]),
        derived=[(role, from_png(data)) for role, data in event["derived"]],
    )


def deployment(
    *,
    engine_options: dict[str, Any],
    max_models: int,
    threads: int,
    min_replicas: int,
    max_replicas: int,
    gpus: bool,
):
    """The Serve application for a pool: `max_replicas` at most, `min_replicas` kept warm.

    ``gpus`` False makes a CPU-only pool: each replica reserves one CPU
    and runs torch on `threads` threads (0: torch's own default). The
    multiplex limit is a decorator argument, so the class is made here,
    for these settings.
    """
    actor_options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        ray_actor_options=actor_options,
        # One job per replica: the device is the shared resource, as the engine's lock says.
        max_ongoing_requests=1,
        max_queued_requests=-1,
        autoscaling_config={
            "min_replicas": min_replicas,
            "initial_replicas": max(min_replicas, 1),
            "max_replicas": max_replicas,
            "target_ongoing_requests": 1,
            # A job is seconds long: scale on what waits now, not on a minute's average.
            "upscale_delay_s": 0,
            "downscale_delay_s": 300,
        },
        graceful_shutdown_timeout_s=5,
    )
    class Replica:
        def __init__(self) -> None:
            if threads:
                import torch

                torch.set_num_threads(threads)
            options = dict(engine_options)
            options["switches"] = Switches(**options.pop("switches", {}))
            self.engine = Engine(**options, max_models=max_models)
            context = serve.get_replica_context()
            self.where = {
                "node": socket.gethostname(),
                "replica": context.replica_id.unique_id,
                "pid": os.getpid(),
            }

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def model(self, source: str):
            # The engine keeps the same number of models, least recently used
            # first, over the same sequence of uses, so it drops the one Serve drops.
            return await asyncio.to_thread(self.engine.load, source)

        def environment(self) -> dict[str, Any]:
            return {**self.engine.environment(), "node": self.where["node"], "replica": self.where["replica"]}

        async def describe(
            self, request: dict[str, Any] | None = None, inputs: dict[str, bytes] | None = None
        ) -> dict[str, Any]:
            """Load the model named in the call (and check `request` against it); its revision and family."""
            loaded = await self.model(serve.get_multiplexed_model_id())
            if request is not None:
                images = {key: from_png(data) for key, data in (inputs or {}).items()}
                await asyncio.to_thread(self.engine.check, request_from_dict(request, images))
            return {
                "revision": loaded.revision,
                "family": loaded.family,
                "environment": self.environment(),
                **self.where,
            }

        async def generate(
            self, params: dict[str, Any], inputs: dict[str, bytes], previews: bool
        ) -> AsyncIterator[dict[str, Any]]:
            """Run one request, yielding its events as they happen (see the module's docstring)."""
            # 1. The request, its inputs and its model (already here, when Serve routed well).
            request = request_from_dict(params, {key: from_png(data) for key, data in inputs.items()})
            loaded = await self.model(serve.get_multiplexed_model_id())
            yield {
                "event": "started",
                "model_revision": loaded.revision,
                "environment": self.environment(),
                **self.where,
            }
            # 2. The engine runs in a thread; its callbacks hop onto this loop's queue.
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            cancel = CancelToken()

            def put(event: dict[str, Any]) -> None:
                loop.call_soon_threadsafe(events.put_nowait, event)

            def run() -> None:
                try:
                    result = self.engine.run(
                        request,
                        progress=lambda step, total: put({"event": "step", "step": step, "total": total}),
                        cancel=cancel,
                        preview=(lambda image: put({"event": "preview", "image": png_bytes(image)}))
                        if previews
                        else None,
                    )
                    event = result_event(result)
                    event["environment"] = {
                        **event["environment"],
                        "node": self.where["node"],
                        "replica": self.where["replica"],
                    }
                    put(event)
                except BaseException as error:  # noqa: BLE001 - handed to the caller's side below
                    if _out_of_memory(error):
                        self.engine.free_memory()  # what the failed run left must not fail the next one
                    put({"event": "error", "error": error})

            running = loop.run_in_executor(None, run)
            # 3. Relay until the result. A caller that cancels (gen.cancel()) or
            #    goes away ends this generator at an await: the token stops the engine.
            try:
                while True:
                    event = await events.get()
                    if event["event"] == "error":
                        raise event["error"]
                    yield event
                    if event["event"] == "result":
                        return
            finally:
                if not running.done():
                    cancel.cancel()
                    log.info("Job cancelled by its caller; the engine stops at its next step.")

    return Replica.bind()


def _out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError)
