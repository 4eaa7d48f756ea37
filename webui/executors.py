"""Where generations run: the studio's executor boundary, and the Ray Serve pool behind it.

The studio calls its executor through six methods: ``check(request)``,
``load(model)`` (something with ``.revision``), ``run(request, progress=,
cancel=, preview=)`` (a GenerationResult), ``environment()``,
``free_memory()`` and ``family_of(model)``. The ``local`` executor is the
`Engine` itself, in this process. `RayExecutor` has the same methods and
sends each job to a Ray Serve deployment (pipelines/replica.py): one
replica per GPU, on this machine or on many.

What it hides: connecting to Ray (or starting it here when no address is
given), deploying the pool, routing a job to a replica that holds its
model, relaying steps and previews as they stream back, turning a Cancel
into a cancelled stream, retrying once a job whose replica died before it
had done anything, and saying "no GPU workers reachable" while the cluster
is away. The studio process stays the one writer of rows and files; a GPU
host needs the package and its model cache, never the data folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.requests import GenerationRequest
from webui.errors import GpuWorkerLost, GpuWorkersUnreachable

if TYPE_CHECKING:  # both bring torch (and ray) with them; the page does not wait for them
    from pipelines.engine import CancelToken, GenerationResult, ProgressFn
    from webui.settings import Settings

log = logging.getLogger(__name__)

UNREACHABLE = "No GPU workers reachable: jobs stay queued and run when the Ray cluster is back."


@dataclass(frozen=True)
class RemoteModel:
    """A model as a replica loaded it: what `Engine.load` tells the studio, without the weights."""

    revision: str
    family: str
    environment: dict[str, Any] = field(default_factory=dict)


class _Lost(Exception):
    """A stream broke because its replica (or the cluster) went away; `produced`: a step had come back."""

    def __init__(self, error: BaseException, *, produced: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.produced = produced


class RayExecutor:
    """The studio's executor on a Ray Serve pool; thread-safe, one per studio process.

    The connection is made on first use and, while the cluster cannot be
    reached, tried again at most every `retry_seconds`; `status()` says
    why nothing runs, for the UI. `capacity` is the pool's most replicas:
    the studio runs that many worker threads.
    """

    def __init__(
        self,
        *,
        address: str = "",
        min_replicas: int = 1,
        max_replicas: int = 0,
        max_models: int = 2,
        threads: int = 0,
        engine_options: dict[str, Any] | None = None,
        retry_seconds: float = 5.0,
        fallback_capacity: int = 1,
    ) -> None:
        self.address = address
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.max_models = max_models
        self.threads = threads
        self.engine_options = dict(engine_options or {})
        self.retry_seconds = retry_seconds
        self._fallback_capacity = fallback_capacity
        self._lock = threading.Lock()
        self._handle: Any = None
        self._capacity: int | None = None
        self._started_ray = False
        self._stale = False  # connected once, then lost: the next connection starts afresh
        self._last_try = float("-inf")
        self._error: str | None = None
        self._families: dict[str, str] = {}
        self._environment: dict[str, Any] = {"executor": "ray"}
        self.last_started: dict[str, Any] = {}  # where the latest job went: node, replica, pid

    @classmethod
    def from_settings(cls, settings: Settings) -> RayExecutor:
        switches = settings.switches()
        engine_options = {
            "device": settings.device or None,
            "dtype": settings.dtype or None,
            "text_cache_size": settings.text_cache_size,
            "switches": dataclasses.asdict(switches),
            # Paths as the GPU hosts see them: they share the model cache and LoRA folder, not the gallery.
            "loras_dir": str(settings.loras_folder),
            "ip_adapter_folders": {
                family: folder
                for family, folder in (("sd", settings.ip_adapter_sd15), ("sdxl", settings.ip_adapter_sdxl))
                if folder
            },
        }
        return cls(
            address=settings.ray_address,
            min_replicas=settings.ray_min_replicas,
            max_replicas=settings.ray_max_replicas,
            max_models=settings.max_models,
            threads=settings.ray_threads,
            engine_options=engine_options,
            fallback_capacity=settings.ray_max_replicas or settings.gpu_workers,
        )

    # -- the connection -----------------------------------------------------

    def _connect(self, *, wait: bool = True) -> Any:
        """The pool's handle, deployed on first use; raises GpuWorkersUnreachable while the cluster is away.

        With `wait` False, a connection that another thread is making is not
        waited for: GpuWorkersUnreachable at once, with the last known reason.
        """
        if not self._lock.acquire(blocking=wait):
            raise GpuWorkersUnreachable(self._error or UNREACHABLE)
        try:
            if self._handle is not None:
                return self._handle
            if time.monotonic() - self._last_try < self.retry_seconds:
                raise GpuWorkersUnreachable(self._error or UNREACHABLE)
            self._last_try = time.monotonic()
            try:
                self._handle = self._deploy()
            except Exception as error:  # any way of not reaching it reads the same to the person waiting
                self._error = UNREACHABLE
                log.warning("Could not reach the Ray cluster at %s: %s", self.address or "this machine", error)
                self._shutdown()
                raise GpuWorkersUnreachable(UNREACHABLE) from error
            self._error = None
            return self._handle
        finally:
            self._lock.release()

    def _deploy(self) -> Any:
        # Read when Ray is imported: a Ray call after this studio left the
        # cluster (Serve's router pushes metrics) must not start a Ray here.
        os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
        import ray
        from ray import serve

        from pipelines import replica

        if self.address and not self._answers():
            raise ConnectionError(f"nothing answers at {self.address}")
        if self._stale and ray.is_initialized():
            ray.shutdown()
        self._stale = False
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:  # this machine: every GPU it has
                ray.init(include_dashboard=False, log_to_driver=False)
                self._started_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        most = self.max_replicas or max(gpus, 1)
        serve.start(proxy_location="Disabled")
        app = replica.deployment(
            engine_options=self.engine_options,
            max_models=self.max_models,
            threads=self.threads,
            min_replicas=min(self.min_replicas, most),
            max_replicas=most,
            gpus=gpus > 0,
        )
        handle = serve.run(app, name=replica.APP_NAME, route_prefix=None)
        self._capacity = most
        log.info("Ray Serve pool ready: %d replica(s) at most, %s.", most, "one per GPU" if gpus else "CPU only")
        return handle

    def _answers(self) -> bool:
        """Whether the head's port takes a connection: ray.init itself waits minutes for a head that is away."""
        import socket

        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            return False

    def _lost_cluster(self, error: BaseException) -> None:
        """Forget the handle so the next job reconnects; until then workers see `status()`."""
        with self._lock:
            self._handle = None
            self._stale = True
            self._error = UNREACHABLE
            self._last_try = time.monotonic()
        log.warning("Lost the Ray cluster: %s", error)

    def _shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def reachable(self, *, wait: bool = True) -> bool:
        """Whether jobs can be sent now (connecting, at most every `retry_seconds`, when not connected).

        With `wait` False (the page's status line), a connection under way
        in another thread is not waited for: the answer is what was known
        before it, reachable unless a try had failed.
        """
        if self._handle is not None and self.address and time.monotonic() - self._last_try >= self.retry_seconds:
            self._last_try = time.monotonic()
            if not self._answers():
                self._lost_cluster(ConnectionError(f"nothing answers at {self.address}"))
                return False
        try:
            self._connect(wait=wait)
        except GpuWorkersUnreachable:
            return self._handle is not None or (not wait and self._error is None)
        return True

    def status(self) -> str | None:
        """A sentence for the UI when no job can run; None when the pool is reachable (or not tried yet)."""
        # Read without the lock, which a connection under way holds for as long as it takes.
        handle, error = self._handle, self._error
        return None if handle is not None else error

    @property
    def capacity(self) -> int:
        """The pool's most replicas (jobs at once); before the first connection, the configured fallback."""
        if self._capacity is None:
            self.reachable()
        return self._capacity or self._fallback_capacity

    def close(self) -> None:
        """Leave the cluster (the pool stays deployed on a shared one); stop the Ray this process started."""
        # A worker stuck connecting holds the lock; closing must not wait for it.
        if not self._lock.acquire(timeout=10):
            log.warning("Closing the Ray executor while a connection attempt is still under way.")
            return
        try:
            self._handle = None
            if self._started_ray:
                from ray import serve

                try:
                    serve.shutdown()
                finally:
                    self._shutdown()
            else:
                self._shutdown()
        finally:
            self._lock.release()

    # -- the executor's methods ---------------------------------------------

    def _describe(self, model: str, request: GenerationRequest | None = None) -> RemoteModel:
        handle = self._connect().options(multiplexed_model_id=model)
        params, inputs = _wire(request) if request is not None else (None, None)
        try:
            answer = handle.describe.remote(params, inputs).result()
        except Exception as error:
            raise _cause(error) from None
        self._families[model] = answer["family"]
        return RemoteModel(revision=answer["revision"], family=answer["family"], environment=answer["environment"])

    def check(self, request: GenerationRequest) -> RemoteModel:
        """Load the request's model on a replica and refuse what it cannot do, as `Engine.check`."""
        return self._describe(request.model, request)

    def load(self, model: str) -> RemoteModel:
        """The model on a replica (loaded there if none holds it): its revision and family."""
        return self._describe(model)

    def family_of(self, model: str) -> str | None:
        """The family a replica reported for this model; None when none has loaded it yet."""
        return self._families.get(model)

    def environment(self) -> dict[str, Any]:
        """The last environment a replica reported (the studio records it for a run that failed)."""
        return dict(self._environment)

    def free_memory(self) -> None:
        """Nothing to do here: a replica frees its own memory when a run on it runs out (pipelines/replica.py)."""

    def run(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        preview: Callable[[Any], None] | None = None,
    ) -> GenerationResult:
        """Run `request` on a replica, as `Engine.run` runs it here; raises GpuWorkerLost when its replica died mid-run.

        A replica that died before the first step is no loss: the job is
        sent once more (Serve routes it to a live replica).
        """
        params, inputs = _wire(request)
        for attempt in (1, 2):
            try:
                return self._stream(request, params, inputs, progress=progress, cancel=cancel, preview=preview)
            except _Lost as lost:
                if lost.produced or attempt == 2:
                    raise GpuWorkerLost(
                        f"Interrupted: the GPU worker running it stopped ({type(lost.error).__name__}). "
                        "Requeue it to run it again."
                    ) from lost.error
                log.warning("A replica died before its job's first step; sending the job again: %s", lost.error)
        raise AssertionError("unreachable")

    def _stream(
        self,
        request: GenerationRequest,
        params: dict[str, Any],
        inputs: dict[str, bytes],
        *,
        progress: ProgressFn | None,
        cancel: CancelToken | None,
        preview: Callable[[Any], None] | None,
    ) -> GenerationResult:
        import ray.exceptions
        from ray.serve.exceptions import RequestCancelledError

        from pipelines.engine import GenerationResult
        from pipelines.replica import from_png, result_from_event

        started = time.perf_counter()
        handle = self._connect().options(multiplexed_model_id=request.model, stream=True)
        stream = handle.generate.remote(params, inputs, preview is not None)
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(stream, cancel, done), daemon=True, name="atelier-cancel")
        if cancel is not None:
            watcher.start()
        produced = False
        revision, environment = "", dict(self._environment)
        try:
            for event in stream:
                kind = event["event"]
                if kind == "started":
                    revision, environment = event["model_revision"], event["environment"]
                    self.last_started = {key: event[key] for key in ("node", "replica", "pid")}
                    self._environment = dict(environment)
                elif kind == "step":
                    produced = True
                    if progress is not None:
                        progress(event["step"], event["total"])
                elif kind == "preview" and preview is not None:
                    preview(from_png(event["image"]))
                elif kind == "result":
                    self._environment = dict(event["environment"])
                    return result_from_event(event)
        except (RequestCancelledError, ray.exceptions.TaskCancelledError):
            if cancel is None or not cancel.cancelled:
                raise
            # The replica's stream ended with the cancel; its engine stops at its next step.
            return GenerationResult(
                images=[],
                seeds=request.seeds,
                cancelled=True,
                duration_ms=round((time.perf_counter() - started) * 1000),
                model_revision=revision,
                environment=environment,
            )
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as error:
            raise _Lost(error, produced=produced) from error
        except (ray.exceptions.RaySystemError, ConnectionError) as error:
            self._lost_cluster(error)
            raise _Lost(error, produced=produced) from error
        except ray.exceptions.RayTaskError as error:
            raise _cause(error) from None
        finally:
            done.set()
        raise GpuWorkerLost("Interrupted: the GPU worker's stream ended without a result. Requeue it to run it again.")


def _watch(stream: Any, cancel: CancelToken, done: threading.Event) -> None:
    """Cancel the stream as soon as the job's token is set (the iterating thread is blocked on the next event)."""
    while not done.wait(0.05):
        if cancel.cancelled:
            stream.cancel()
            return


def _wire(request: GenerationRequest) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The request as it travels: its dict, and its input images as PNG bytes by pixel hash."""
    from pipelines.replica import png_bytes

    inputs = {ref.sha256: png_bytes(ref.image) for _, ref in request.input_images if ref.image is not None}
    return request.to_dict(), inputs


def _cause(error: BaseException) -> BaseException:
    """The replica's own exception (a ModelError, a RequestError) rather than Ray's wrapper around it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
