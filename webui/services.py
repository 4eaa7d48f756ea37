"""The services one process runs on, built once at start-up and handed to whoever uses them.

`build_services` is the one place that wires them: one database object (its
engine made and its migrations run once) behind the gallery and the
accounts, the studio over the gallery, and the GPU workers that run the
studio's queue. `atelier serve` and every CLI command that touches the
gallery start here, as InvokeAI's `ApiDependencies.initialize` does; nothing
opens a database of its own on the side. Importing this module brings
neither torch nor Gradio: the studio makes its engine on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from storage import Database, Gallery, Users
from storage.audit import AuditLog
from storage.logins import LoginGuard, LoginPolicy, Sessions
from webui.settings import Settings
from webui.studio import Studio
from webui.workers import Workers


@dataclass(frozen=True)
class Access:
    """Who may come in and what they did: accounts, the login guard, sessions and the audit log."""

    users: Users
    logins: LoginGuard  # every password goes through it (the login form, an API's Basic auth)
    sessions: Sessions
    audit: AuditLog


def build_access(database: Database, settings: Settings) -> Access:
    users = Users(database=database)
    audit = AuditLog(database=database)
    # A lock set low (a test, a strict site) leaves fewer free failures before it.
    free = min(LoginPolicy.free_failures, settings.login_lock_after - 1)
    policy = LoginPolicy(free_failures=free, lock_after=settings.login_lock_after, base_delay=settings.login_delay)
    return Access(
        users=users,
        logins=LoginGuard(users=users, database=database, audit=audit, policy=policy),
        sessions=Sessions(database=database, hours=settings.session_hours),
        audit=audit,
    )


@dataclass(frozen=True)
class Services:
    settings: Settings
    database: Database
    gallery: Gallery
    users: Users
    studio: Studio
    workers: Workers  # the studio's; not started (the app starts them, a CLI run never queues)
    access: Access

    def __enter__(self) -> Services:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (a running job stops at its next step), then the gallery's leases, then disconnect."""
        try:
            self.studio.close()
            self.users.close()
        finally:
            self.database.close()


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.gallery_url)
    try:
        access = build_access(database, settings)
        gallery = Gallery(database=database, data_dir=settings.data_dir, lease_seconds=settings.lease_seconds)
    except BaseException:
        database.close()
        raise
    studio = Studio(settings=settings, gallery=gallery)
    return Services(
        settings=settings,
        database=database,
        gallery=gallery,
        users=access.users,
        studio=studio,
        workers=studio.workers,
        access=access,
    )
