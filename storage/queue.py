"""The job queue's rules: which queued job goes next, and when a running job counts as gone.

Order. Users take turns: the next job is the oldest queued job of the user
whose latest start is the oldest (a user who has never started a job goes
first; ties go to the older job). Within one user it is first in, first out,
by id. So when one user has queued 100 jobs and another then queues 2, the
second user's jobs start at the next two turns that are theirs: claims 2 and
4 from then on if the first user went at claim 1. A start counts whatever
made it: a claim from the queue or a direct `Gallery.start` (the CLI). The
rule reads only `status`, `user` and `started_at`, so it needs no state of its
own and holds across processes and restarts. `claim_order` replays it over
the queue as it stands, for positions and the queue listing; `next_job` is
the same rule as one query, for claiming.

Leases. A running job carries its worker's id (`worker_id`: host, process
id and a random token, so a restarted process that reuses a pid is a new
worker) and `lease_expires_at`. The worker renews the lease while the
process lives (`LeaseKeeper`, every third of the lease); nothing else does.
A running job whose lease has expired is gone, whatever the reason (killed,
crashed, machine lost, database out of reach for a whole lease): the first
reader marks it interrupted (`lease_ran_out`), and from then on its worker's
heartbeat, finish or fail is refused (LeaseLost). A job whose lease has not
expired is never touched, however old it is. The deadline is compared with
the clock of the process that reads, so processes sharing a database need
clocks that agree to well within a lease (NTP does; the default lease is 30
seconds).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import aliased

from storage.errors import LeaseLost, StorageError
from storage.models import Generation

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
MAX_LEASE_SECONDS = 24 * 3600.0
INTERRUPTED = "Interrupted: the process running it stopped renewing its lease. Requeue it to run it again."


def worker_id() -> str:
    """A new worker id: `host:pid:token`, at most 255 characters."""
    return f"{socket.gethostname()[:200]}:{os.getpid()}:{secrets.token_hex(4)}"


def check_lease(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise StorageError(f"lease_seconds must be a number of seconds, not {seconds!r}.")
    if not 0 < seconds <= MAX_LEASE_SECONDS:
        raise StorageError(f"lease_seconds must be more than 0 and at most {MAX_LEASE_SECONDS:g}, not {seconds}.")
    return float(seconds)


def lease_ran_out(now: datetime) -> ColumnElement[bool]:
    """Running jobs whose lease expired at or before `now`."""
    return and_(Generation.status == "running", Generation.lease_expires_at <= now)


def lease_held(worker: str | None, now: datetime) -> ColumnElement[bool]:
    """Running jobs whose lease is still good at `now` (and, given a worker, is that worker's)."""
    held = and_(Generation.status == "running", Generation.lease_expires_at > now)
    return held if worker is None else and_(held, Generation.lease_owner == worker)


def next_job() -> Select[tuple[int]]:
    """The id of the queued job whose turn it is (see the module's docstring)."""
    heads = (
        select(Generation.user.label("user"), func.min(Generation.id).label("head"))
        .where(Generation.status == "queued")
        .group_by(Generation.user)
        .subquery()
    )
    started = aliased(Generation)
    # One index probe per waiting user (ix_generations_user_started_at).
    latest = select(func.max(started.started_at)).where(started.user == heads.c.user).scalar_subquery()
    return select(heads.c.head).order_by(latest.asc().nulls_first(), heads.c.head).limit(1)


def claim_order(queued: Iterable[tuple[int, str]], latest_start: Mapping[str, datetime | None]) -> list[int]:
    """The ids of queued jobs `(id, user)` in the order claims would take them if nothing else changed.

    `latest_start` is each user's latest `started_at` (None: never started).
    """
    waiting: dict[str, deque[int]] = {}
    for generation_id, user in sorted(queued):
        waiting.setdefault(user, deque()).append(generation_id)
    # Turn keys: never started < started at a time < started by this replay (in replay order).
    turns: list[tuple[tuple[int, Any], int, str]] = []
    for user, ids in waiting.items():
        last = latest_start.get(user)
        turns.append(((0, 0) if last is None else (1, last), ids[0], user))
    heapq.heapify(turns)
    order: list[int] = []
    while turns:
        _, _, user = heapq.heappop(turns)
        ids = waiting[user]
        order.append(ids.popleft())
        if ids:
            heapq.heappush(turns, ((2, len(order)), ids[0], user))
    return order


class LeaseKeeper:
    """Renews the leases this process holds, on one daemon thread, until each job ends or the keeper closes.

    A lease lives exactly as long as the process that holds it: a killed
    process renews nothing, and its jobs are interrupted one lease later.
    `renew(generation_id, worker, lease_seconds)` raises LeaseLost when the
    job is no longer the worker's; the keeper then lets it go.
    """

    def __init__(self, renew: Callable[[int, str, float], object]) -> None:
        self._renew = renew
        self._held: dict[int, tuple[str, float, float]] = {}  # id -> (worker, lease, next renewal, monotonic)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, generation_id: int, *, worker: str, lease_seconds: float) -> None:
        with self._changed:
            if self._closed:
                return
            self._held[generation_id] = (worker, lease_seconds, time.monotonic() + lease_seconds / 3)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="atelier-leases", daemon=True)
                self._thread.start()
            self._changed.notify()

    def release(self, generation_id: int) -> None:
        with self._changed:
            self._held.pop(generation_id, None)

    def close(self) -> None:
        """Stop renewing; leases still held run out on their own."""
        with self._changed:
            self._closed = True
            self._held.clear()
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                due = self._wait_for_due()
                if due is None:
                    return
            for generation_id, worker, lease_seconds in due:
                try:
                    self._renew(generation_id, worker, lease_seconds)
                except LeaseLost as error:
                    with self._changed:
                        held = self._held.pop(generation_id, None) is not None
                    if held:  # not a job that ended between the wait and the renewal
                        log.warning("%s", error)
                except Exception:  # the next renewal tries again; the lease has two more thirds to go
                    log.exception("Could not renew the lease of generation %s.", generation_id)

    def _wait_for_due(self) -> list[tuple[int, str, float]] | None:
        """Under the lock: the leases due for renewal, each rescheduled; None once closed."""
        while not self._closed:
            now = time.monotonic()
            due = [(gid, worker, lease) for gid, (worker, lease, at) in self._held.items() if at <= now]
            if due:
                for generation_id, worker, lease in due:
                    self._held[generation_id] = (worker, lease, now + lease / 3)
                return due
            soonest = min((at for _, _, at in self._held.values()), default=None)
            self._changed.wait(None if soonest is None else soonest - now)
        return None
