"""GPU workers: threads that take queued jobs from the gallery and run them through the studio.

A job is a gallery record: storage/queue.py decides whose turn it is (round
robin between users) and keeps each running job's lease, so the queue
survives a restart and processes sharing a database never run one job
twice. What lives only here, in memory, is who waits for which job: one
`Ticket` per job, through which its worker reports the steps and the end,
and through which the session that queued it, and no other, reads them
(webui/jobs.py keeps the tickets per session).

The workers run with the engine's one-run-at-a-time lock, so `gpu_workers`
threads is the GPU's concurrency; everything else waits in the gallery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pipelines.errors import ModelError
from pipelines.progress import CancelToken
from pipelines.requests import GenerationRequest, RequestError
from storage import Gallery, GenerationRecord, LeaseLost, NotAllowed, RecordNotFound, StorageError
from webui.errors import GpuWorkerLost, GpuWorkersUnreachable, StudioError

log = logging.getLogger(__name__)

_PLACES_READ = 1000  # the most queued jobs whose places one read finds; those further back ask the gallery


class JobFailed(RuntimeError):
    """A queued job ended without a result; the message says why, to the person who waited for it."""


class Ticket:
    """One queued job as its waiting session sees it: its place in line, then its steps, then its end.

    The worker calls `started`, `step`, `ended` or `failed`; the session
    calls `wait`. `cancel` is the job's own token: set it and the engine
    stops at the next step (or before the first, if the job has not started).
    """

    def __init__(self, generation_id: int, *, watched: bool) -> None:
        self.generation_id = generation_id
        self.watched = watched  # a session waits for it (False: queued before a restart, or elsewhere)
        self.cancel = CancelToken()
        self._changed = threading.Condition()
        self._version = 0
        self._place: int | None = None
        self._running = False
        self._step: tuple[int, int] | None = None
        self._done = False
        self._record: GenerationRecord | None = None
        self._error: str | None = None
        self.latest_preview: Any = None  # the engine's latest preview picture, for a tab that shows it

    @property
    def running(self) -> bool:
        with self._changed:
            return self._running and not self._done

    # -- the worker's side --------------------------------------------------

    def started(self) -> None:
        self._update(running=True)

    def step(self, step: int, total: int) -> None:
        """The engine's progress callback for this job."""
        self._update(step=(step, total))

    def preview(self, image: Any) -> None:
        """The engine's preview callback: the picture forming, every few steps."""
        self.latest_preview = image

    def requeued(self) -> None:
        """Back in the queue without having run (the GPU pool went out of reach); its place is read anew."""
        self._update(running=False, step=None, place=None)

    def ended(self, record: GenerationRecord) -> None:
        self._update(done=True, record=record)

    def failed(self, message: str) -> None:
        self._update(done=True, error=message)

    def placed(self, place: int | None) -> None:
        """Its place in line as the queue stands now; None when this process did not find it queued."""
        self._update(place=place)

    def _update(self, **changes: object) -> None:
        with self._changed:
            if self._done:
                return
            for name, value in changes.items():
                setattr(self, f"_{name}", value)
            self._version += 1
            self._changed.notify_all()

    # -- the waiting session's side --------------------------------------------

    def wait(
        self,
        gallery: Gallery,
        *,
        waiting: Callable[[int], None],
        progress: Callable[[int, int], None] | None,
        poll_seconds: float = 5.0,
    ) -> GenerationRecord:
        """Block until the job ends; report its place in line and then its steps, in this thread.

        Returns the ended record (succeeded or cancelled); raises JobFailed
        with a sentence for the person when it failed or was interrupted.
        The workers tell each ticket its place whenever this process's queue
        moves; the gallery is asked only when they did not find the job
        queued, and after `poll_seconds` without word, since other processes
        sharing the database move the queue too (and may run the job: then
        its end is read from the gallery).
        """
        seen = -1
        shown_place: int | None = None
        shown_step: tuple[int, int] | None = None
        while True:
            with self._changed:
                heard = self._changed.wait_for(lambda: self._version != seen, timeout=poll_seconds)
                seen = self._version
                done, record, error = self._done, self._record, self._error
                running, step, place = self._running, self._step, self._place
            if done:
                if error is not None:
                    raise JobFailed(error)
                assert record is not None
                return record
            if running:
                if progress is not None and step is not None and step != shown_step:
                    shown_step = step
                    progress(*step)
                continue
            if not heard or place is None:
                where = self._where(gallery)
                if isinstance(where, GenerationRecord):
                    return where
                place = where
            if place is not None and place != shown_place:
                shown_place = place
                waiting(place)

    def _where(self, gallery: Gallery) -> int | GenerationRecord | None:
        """Its place in line; its record once it ended elsewhere; None while it runs (here: the ticket hears next)."""
        try:
            return gallery.queue_position(self.generation_id)
        except RecordNotFound:
            raise JobFailed(f"Generation {self.generation_id} was deleted before it ran.") from None
        except StorageError:  # not queued any more
            pass
        record = gallery.get(self.generation_id)
        if record.status in ("succeeded", "cancelled"):
            return record
        if record.status in ("failed", "interrupted"):
            raise JobFailed(f"Generation {self.generation_id} {record.status}: {record.error}")
        return None


class Workers:
    """`count` threads that claim queued jobs, in the queue's order, and run them.

    They are handed the five calls they make, not the services behind them:
    `enqueue` records a request as a queued job or refuses it (the studio's
    `enqueue`), `run` runs a claimed job to its end (the studio's
    `run_job`), and `claim`, `queued` and `cancel` are the gallery's
    `claim_next`, `queued` and `cancel`. `blocked` says why no job can run
    now (the studio's `gpu_status`: a Ray pool out of reach); while it does,
    nothing is claimed and the jobs wait in the queue.

    Jobs queued before a restart, by another process or by a requeue are
    claimed like any other; nobody waits for them here, so their end is
    only in the gallery. `idle_seconds` is how often an idle worker looks
    for such jobs; a job queued through `enqueue` wakes one at once.
    """

    def __init__(
        self,
        *,
        count: int,
        enqueue: Callable[..., GenerationRecord],
        run: Callable[..., GenerationRecord],
        claim: Callable[[], GenerationRecord | None],
        queued: Callable[..., list[GenerationRecord]],
        cancel: Callable[..., GenerationRecord],
        blocked: Callable[[], str | None] = lambda: None,
        idle_seconds: float = 1.0,
    ) -> None:
        self.count = count
        self._enqueue, self._run_job = enqueue, run
        self._claim, self._queued, self._cancel = claim, queued, cancel
        self._blocked = blocked  # why no job can run now (a Ray pool out of reach), or None
        self._idle_seconds = idle_seconds
        self._tickets: dict[int, Ticket] = {}
        self._lock = threading.Lock()
        self._placing = threading.Lock()
        self._work_arrived = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self) -> None:
        """Start the threads (once); from then on queued jobs run, those left from before a restart first."""
        with self._lock:
            if self._threads or self._closed:
                return
            self._threads = [
                threading.Thread(target=self._work, name=f"atelier-gpu-{number}", daemon=True)
                for number in range(self.count)
            ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, request: GenerationRequest, *, user: str, parent_id: int | None = None) -> Ticket:
        """Queue a request (`enqueue`: nothing is written if it is refused) and return its ticket."""
        self.start()
        with self._lock:
            # Under the lock: a worker that claims the job at once finds this
            # ticket rather than making one that nobody waits on.
            record = self._enqueue(request, user=user, parent_id=parent_id)
            ticket = self._tickets[record.id] = Ticket(record.id, watched=True)
        self.moved()
        return ticket

    def forget(self, ticket: Ticket) -> None:
        """The session stopped waiting for this ticket."""
        with self._lock:
            if self._tickets.get(ticket.generation_id) is ticket:
                del self._tickets[ticket.generation_id]

    def cancel(self, ticket: Ticket, *, by: str, is_admin: bool) -> str:
        """Stop a job: at once while it waits, at the next step once it runs. Says which, in words."""
        # First the token: a worker that claims the job from now on stops before its first step.
        ticket.cancel.cancel()
        try:
            record = self._cancel(ticket.generation_id, by=by, is_admin=is_admin)
        except (NotAllowed, RecordNotFound):
            raise
        except StorageError:  # it started running meanwhile; the token stops it
            return "Cancelling at the next step…"
        ticket.ended(record)
        self.moved()
        return f"Cancelled generation {record.id} before it started."

    def moved(self) -> None:
        """The queue changed: an idle worker looks for a job, and each waiting session learns its place.

        One read of the queue tells every session here its place, rather
        than each asking the gallery for its own as often as the queue moves.
        """
        self._work_arrived.set()
        with self._placing:  # one at a time, so an older reading never lands after a newer one
            with self._lock:
                waiting = [ticket for ticket in self._tickets.values() if ticket.watched and not ticket.running]
            if not waiting:
                return
            try:
                queued = self._queued(limit=_PLACES_READ)
            except Exception:  # the sessions ask the gallery themselves
                log.exception("Could not read the queue's order.")
                queued = []
            places = {record.id: place for place, record in enumerate(queued, start=1)}
            for ticket in waiting:
                ticket.placed(places.get(ticket.generation_id))

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop claiming; a running job stops at its next step (cancelled), waiting sessions are told."""
        with self._lock:
            self._closed = True
            threads, tickets = self._threads, list(self._tickets.values())
        for ticket in tickets:
            if ticket.running:
                ticket.cancel.cancel()
            else:
                ticket.failed(
                    f"The studio stopped before generation {ticket.generation_id} ran; it stays queued and runs "
                    "when the studio starts again."
                )
        self._work_arrived.set()
        for thread in threads:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            # Cleared before the claim, so a job queued after the claim looked still wakes the wait below.
            self._work_arrived.clear()
            if self._blocked() is not None:  # a Ray pool out of reach: the jobs wait in the queue
                self._work_arrived.wait(self._idle_seconds)
                continue
            try:
                record = self._claim()
            except Exception:  # the database out of reach, say: try again, the queue is still there
                log.exception("Could not take a job from the queue; trying again.")
                record = None
            if record is None:
                self._work_arrived.wait(self._idle_seconds)
                continue
            with self._lock:
                ticket = self._tickets.get(record.id)
                if ticket is None:
                    ticket = self._tickets[record.id] = Ticket(record.id, watched=False)
                if self._closed:  # claimed as the studio stopped: end it at once, as cancelled
                    ticket.cancel.cancel()
            ticket.started()
            self.moved()
            try:
                self._run(ticket, record)
            finally:
                if not ticket.watched:
                    self.forget(ticket)

    def _run(self, ticket: Ticket, record: GenerationRecord) -> None:
        try:
            preview = ticket.preview if ticket.watched else None
            ended = self._run_job(record, progress=ticket.step, cancel=ticket.cancel, preview=preview)
        except LeaseLost as error:
            # The job was marked interrupted (this process stalled past its lease);
            # whoever waits is told, and the gallery offers a requeue.
            log.warning("Generation %s was interrupted while it ran: %s", record.id, error)
            ticket.failed(f"Generation {record.id} was interrupted: {error}")
        except GpuWorkersUnreachable:
            # Back in the queue (Studio.run_job released it); its session waits on, as for any queued job.
            log.warning("Generation %s went back to the queue: no GPU workers reachable.", record.id)
            ticket.requeued()
        except GpuWorkerLost as error:
            log.warning("Generation %s was interrupted: its GPU worker went away.", record.id)
            ticket.failed(f"Generation {record.id}: {error}")
        except (ModelError, RequestError, StudioError) as error:
            ticket.failed(str(error))
        except Exception as error:
            log.exception("Generation %s failed.", record.id)
            ticket.failed(f"Generation {record.id} failed: {type(error).__name__}: {error}")
        else:
            ticket.ended(ended)
