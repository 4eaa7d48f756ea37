"""The gallery service: generation records and their image files, one short transaction per method."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

from sqlalchemy.orm import Session

from storage.db import Database, open_or_share
from storage.files import FileStore
from storage.gallery.core import referenced
from storage.gallery.delete import Delete
from storage.gallery.jobs import Jobs
from storage.gallery.reads import Reads
from storage.gallery.review import Review
from storage.gallery.runs import Runs
from storage.models import utcnow
from storage.queue import LEASE_SECONDS, LeaseKeeper, check_lease, worker_id

log = logging.getLogger(__name__)


# One class per concern, sharing the state GalleryCore declares (core.py). Mixins rather than service
# objects behind a facade: the public API is the methods themselves, and forwarding all twenty-five
# (finish and fail take six keywords each) would write every signature twice, to drift apart.
class Gallery(Jobs, Runs, Reads, Review, Delete):
    """Every generation and image a studio has made, in a database and a data folder.

    The database is the process's `database` (storage/db.py), or one opened
    (and migrated) at `url`, which `close` then closes; a database given stays
    open. The studio's default is `sqlite:///<data_dir>/gallery.db`;
    PostgreSQL (for a team, with images on a shared folder) works the same.
    Full-text search and review state use features of those two (migration
    0002), so other SQLAlchemy backends are not supported.

    Generations are also the jobs of the studio's queue (storage/queue.py says
    who goes next and when a job counts as gone): `enqueue` records one as
    "queued", `claim_next` hands the next one to a worker as "running", and
    `finish` or `fail` end it. `start` records one that runs at once, without
    waiting its turn. A running job holds a lease of `lease_seconds`, which
    this object renews on a thread for as long as the process lives; every
    reader first marks the jobs whose lease ran out "interrupted". `clock`
    tells the time for leases and queue timestamps; tests move it.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        database: Database | None = None,
        data_dir: Path,
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.lease_seconds = check_lease(lease_seconds)
        self.worker = worker_id()
        self._clock = clock
        self.data_dir = Path(data_dir).resolve()
        self._files = FileStore(self.data_dir)
        self._database, self._owns_database = open_or_share("Gallery", url=url, database=database)
        self._engine = self._database.engine
        self._landing = threading.Lock()
        self._leases = LeaseKeeper(self._renew)
        self._recover()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop renewing leases (a job still running here is interrupted one lease later) and disconnect."""
        self._leases.close()
        if self._owns_database:
            self._database.close()

    def path(self, relative: str) -> Path:
        """The absolute path of a record's `path` or `thumb_path`; refuses anything outside the data folder."""
        return self._files.absolute(relative)

    def _recover(self) -> None:
        def committed(shas: set[str]) -> set[str]:
            with Session(self._engine) as session, session.begin():
                return referenced(session, shas)

        outcome = self._files.recover(committed=committed)
        if outcome is None:
            log.info("Skipped recovery of pending files: another process is landing files.")
        elif any(outcome):
            log.info("Recovered pending files: %d landed, %d deleted.", *outcome)
