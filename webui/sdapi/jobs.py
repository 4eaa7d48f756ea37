"""API calls in flight: each call's batches through the studio's queue, their progress, and interrupting them.

A call queues its batches (`n_iter`) one after another through the GPU
workers, as the Text-to-image tab does, so it waits its turn in the same
fair queue as everyone's clicks. What A1111 keeps as one global state
(`shared.state`) is kept here per user: GET progress and POST interrupt see
and stop only the caller's own API calls, never another person's jobs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.requests import GenerationRequest
from storage import Gallery, GenerationRecord, StorageError
from webui.sdapi.responses import png_base64
from webui.workers import Ticket, Workers


@dataclass
class Call:
    """One API call: its batches, which one runs, and how far it is."""

    user: str
    count: int
    started: float = field(default_factory=time.monotonic)
    number: int = 0
    ticket: Ticket | None = None
    step: tuple[int, int] | None = None
    place: int | None = None
    interrupted: bool = False


class ApiJobs:
    def __init__(self, workers: Workers, gallery: Gallery) -> None:
        self.workers = workers
        self.gallery = gallery
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def run(self, requests: list[GenerationRequest], *, user: str) -> list[GenerationRecord]:
        """Queue each batch in turn, wait for it, and return the ended records (an interrupt ends the rest).

        Refusals from the queue (ModelError, RequestError, QueueFull...) and
        JobFailed are raised for the route to answer.
        """
        call = Call(user=user, count=len(requests))
        with self._lock:
            self._calls.append(call)
        records: list[GenerationRecord] = []
        try:
            for number, request in enumerate(requests):
                ticket = self.workers.enqueue(request, user=user)
                with self._lock:
                    call.number, call.ticket, call.step, call.place = number, ticket, None, None
                    stop = call.interrupted
                if stop:  # interrupted between two batches
                    self._cancel(ticket, user)
                try:
                    record = ticket.wait(
                        self.gallery,
                        waiting=lambda place: setattr(call, "place", place),
                        progress=lambda step, total: setattr(call, "step", (step, total)),
                    )
                finally:
                    self.workers.forget(ticket)
                records.append(record)
                if record.status == "cancelled" or call.interrupted:
                    break
        finally:
            with self._lock:
                self._calls.remove(call)
        return records

    def interrupt(self, user: str) -> int:
        """Stop the user's API calls: a waiting batch at once, a running one at its next step; how many."""
        with self._lock:
            calls = [call for call in self._calls if call.user == user]
            for call in calls:
                call.interrupted = True
        for call in calls:
            if call.ticket is not None:
                self._cancel(call.ticket, user)
        return len(calls)

    def _cancel(self, ticket: Ticket, user: str) -> None:
        try:
            self.workers.cancel(ticket, by=user, is_admin=False)
        except StorageError:  # it ended meanwhile
            pass

    def progress(self, user: str, *, skip_current_image: bool) -> dict[str, Any]:
        """A1111's progress answer for the user's first API call in flight; zeros when there is none."""
        with self._lock:
            call = next((c for c in self._calls if c.user == user), None)
            if call is not None:
                number, count, step, place, ticket = call.number, call.count, call.step, call.place, call.ticket
                started, interrupted = call.started, call.interrupted
        if call is None:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": _state(job_count=0),
                "current_image": None,
                "textinfo": None,
            }
        done_steps, total_steps = step or (0, 0)
        fraction = 0.01 + number / count + (done_steps / total_steps / count if total_steps else 0.0)
        elapsed = time.monotonic() - started
        preview = ticket.latest_preview if ticket is not None else None
        waiting = step is None and place is not None
        return {
            "progress": min(fraction, 1.0),
            "eta_relative": max(0.0, elapsed / fraction - elapsed),
            "state": _state(
                job_count=count,
                job_no=number,
                job=f"generation {ticket.generation_id}" if ticket is not None else "",
                sampling_step=done_steps,
                sampling_steps=total_steps,
                interrupted=interrupted,
            ),
            "current_image": None if skip_current_image or preview is None else png_base64(preview),
            "textinfo": f"Waiting: place {place} in the queue" if waiting else None,
        }


def _state(**values: Any) -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
        **values,
    }
