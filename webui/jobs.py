"""Generations in flight, per browser session.

Every tab's Generate (and the gallery's Rerun and New seeds) queues its
request through the GPU workers (webui/workers.py) and waits in its own
handler: first its place in line, then its own job's steps, then its own
record. Gradio gives each browser tab (and each API client) a session hash;
the tickets of the jobs a session queued are kept under that hash, so a
Cancel press reaches only the jobs the same session started, and progress
and results go only to the session that asked.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from pipelines.errors import ModelError
from pipelines.progress import ProgressFn
from pipelines.requests import GenerationRequest, RequestError
from storage import GenerationRecord, StorageError, Users
from storage.audit import NO_ADDRESS, AuditLog
from webui.auth import client_address
from webui.errors import StudioError
from webui.studio import RerunOutcome, Studio
from webui.workers import JobFailed, Ticket

# Handlers beyond the queue's capacity that can run at once, each to say "the queue is full".
REFUSALS_AT_ONCE = 16
PREVIEW_POLL_SECONDS = 0.25  # how often a tab looks for a newer preview while its job runs


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


class Jobs:
    """This process's waiting sessions: the tickets of the jobs each queued, so only it sees and cancels them.

    `users` are the accounts (who may act on everyone's records); the app
    hands in its services' own, and a studio on its own (a test) gets a
    connection of its own here.
    """

    def __init__(self, studio: Studio, *, users: Users | None = None, audit: AuditLog | None = None) -> None:
        self.studio = studio
        self.audit = audit  # None: nothing is recorded (an app built without one, in a test)
        self.settings = studio.settings
        self.gallery = studio.gallery
        self.workers = studio.workers
        self.users = users if users is not None else Users(url=studio.settings.gallery_url)
        self._sessions: dict[str, list[Ticket]] = {}
        self._lock = threading.Lock()

    @property
    def gpu_event(self) -> dict[str, Any]:
        """Event options for a handler that queues a job and waits for it.

        The GPU's concurrency is the workers' (`gpu_workers` threads, or one
        per replica of a Ray pool: `Studio.workers`); the handlers only
        wait, so as many may run as jobs can be queued or running, plus
        room for more to be told at once that the queue is full. Were Gradio
        to allow fewer, its own queue would sit in front of ours: first come,
        first served instead of round robin between users, positions that
        are not the queue's, and a refusal that waits for a free handler.
        """
        limit = self.settings.queue_limit + self.workers.count + REFUSALS_AT_ONCE
        return {"concurrency_id": "gpu", "concurrency_limit": limit}

    def user(self, request: gr.Request | None) -> str:
        # Logged-in name when the studio has accounts, else the settings' user.
        username = getattr(request, "username", None) if request is not None else None
        return username or self.settings.user

    def is_admin(self, request: gr.Request | None) -> bool:
        """Whether this session may act on everyone's records.

        With no accounts the studio is single-user and its user may do
        anything; with accounts, only a logged-in admin may. A session that is
        not logged in although accounts exist (one was added after launch,
        before the restart that turns logins on) is no admin.
        """
        users = self.users
        if users.count_users() == 0:
            return True
        username = getattr(request, "username", None) if request is not None else None
        return username is not None and users.is_admin(username)

    def record(self, request: gr.Request | None, action: str, *, target: str, detail: str = "") -> None:
        """Add what this session's user just did to the audit log, with the address it came from."""
        if self.audit is not None:
            address = client_address(request) if request is not None else NO_ADDRESS
            self.audit.record(action, actor=self.user(request), target=target, address=address, detail=detail)

    def submit(
        self,
        generation: GenerationRequest,
        *,
        request: gr.Request,
        progress: ProgressFn,
        watch: Callable[[Ticket], None] | None = None,
    ) -> GenerationRecord:
        """Queue a request for this session, wait for its turn and its run; the ended record (or gr.Error).

        ``watch`` gets the job's ticket once it is queued (a tab reads its previews from it).
        """
        user = self.user(request)

        def enqueue() -> Ticket:
            ticket = self.workers.enqueue(generation, user=user)
            if watch is not None:
                watch(ticket)
            return ticket

        return self._wait(request, enqueue, progress)

    def follow(
        self,
        generation: GenerationRequest,
        *,
        request: gr.Request,
        progress: ProgressFn,
        poll: float = PREVIEW_POLL_SECONDS,
    ) -> Iterator[tuple[str, Any]]:
        """Submit ``generation`` and yield ("preview", picture) as it forms, then ("record", ended record).

        The job waits in a thread while this generator hands the tab each
        newer preview; a failure is raised here, in the handler's thread.
        """
        ticket: list[Ticket] = []
        finished: dict[str, Any] = {}

        def run() -> None:
            try:
                finished["record"] = self.submit(generation, request=request, progress=progress, watch=ticket.append)
            except BaseException as error:  # handed to the handler's thread below
                finished["error"] = error

        # Gradio finds the event's progress bar through context variables: the thread gets this one's.
        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        worker.start()
        shown = None
        while worker.is_alive():
            worker.join(poll)
            latest = ticket[0].latest_preview if ticket else None
            if latest is not None and latest is not shown:
                shown = latest
                yield "preview", latest
        if "error" in finished:
            raise finished["error"]
        yield "record", finished["record"]

    def rerun(self, record_id: int, *, request: gr.Request, progress: ProgressFn, **changes: Any) -> RerunOutcome:
        """Queue a stored request again (with `changes`) as its record's child, and compare the two."""
        try:
            parent, generation = self.studio.rerun_request(record_id, **changes)
        except (RequestError, StorageError, OSError) as error:
            raise gr.Error(str(error)) from None
        user = self.user(request)
        record = self._wait(request, lambda: self.workers.enqueue(generation, user=user, parent_id=parent.id), progress)
        return self.studio.compare(parent, record)

    def _wait(
        self, request: gr.Request | None, enqueue: Callable[[], Ticket], progress: ProgressFn
    ) -> GenerationRecord:
        try:
            ticket = enqueue()
        except (ModelError, RequestError, StudioError, StorageError) as error:
            raise gr.Error(str(error)) from None
        key = request.session_hash if request is not None else None
        with self._lock:
            if key:
                self._sessions.setdefault(key, []).append(ticket)
        try:
            return ticket.wait(self.gallery, waiting=_show_place, progress=progress)
        except JobFailed as error:
            raise gr.Error(str(error)) from None
        finally:
            self.workers.forget(ticket)
            with self._lock:
                if key and ticket in self._sessions.get(key, ()):
                    self._sessions[key].remove(ticket)
                    if not self._sessions[key]:
                        del self._sessions[key]

    def cancel(self, request: gr.Request) -> None:
        """Stop this session's jobs: a waiting one at once, a running one at its next step."""
        with self._lock:
            tickets = list(self._sessions.get(request.session_hash, ()))
        if not tickets:
            gr.Info("Nothing is running or waiting in this tab.")
            return
        for ticket in tickets:
            try:
                # The session's own job, queued under its own user.
                said = self.workers.cancel(ticket, by=self.user(request), is_admin=False)
            except StorageError as error:
                raise gr.Error(str(error)) from None
            gr.Info(said)


def _show_place(place: int) -> None:
    # A Progress made here reports on the event this thread is handling (Gradio finds it by context).
    gr.Progress()(0.0, desc=f"Waiting: {ordinal(place)} in line")
