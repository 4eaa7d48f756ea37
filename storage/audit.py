"""The audit log: who did what that cannot be undone or that changes access, when, and from where.

Append-only: this service can add and read entries and nothing else, and
the database refuses any UPDATE or DELETE of the table (migration 0006's
triggers), so no route or later bug can edit history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import DatabaseService
from storage.errors import StorageError
from storage.models import AuditEntry, utcnow
from storage.validators import MAX_LIST, check_text

# What is recorded. "override" marks an admin acting on someone else's record.
ACTIONS = (
    "delete",
    "export",
    "requeue",
    "user.add",
    "user.password",
    "user.unlock",
    "user.locked",
    "first-admin",
)
MAX_DETAIL = 2000
NO_ADDRESS = "local"  # the command line: no network address


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    address: str
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "address": self.address,
            "detail": self.detail,
        }


class AuditLog(DatabaseService):
    """Entries of the audit log; give it the process's `database`, or a `url` of its own."""

    def record(self, action: str, *, actor: str, target: str, address: str = NO_ADDRESS, detail: str = "") -> None:
        if action not in ACTIONS:
            raise StorageError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}.")
        check_text(actor, field="actor")
        check_text(target, field="target")
        check_text(address, field="address", longest=64)
        if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
            raise StorageError(f"detail must be text of at most {MAX_DETAIL} characters.")
        with Session(self._engine) as session, session.begin():
            session.add(
                AuditEntry(at=utcnow(), actor=actor, action=action, target=target, address=address, detail=detail)
            )

    def entries(self, *, since: datetime | None = None, limit: int = MAX_LIST) -> list[AuditRecord]:
        """Entries from `since` on (all without it), oldest first; the newest `limit` of them."""
        if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise StorageError("since must be a timezone-aware datetime.")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise StorageError(f"limit must be from 1 to {MAX_LIST}; got {limit!r}.")
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(query).all()
            return [
                AuditRecord(
                    id=row.id,
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    target=row.target,
                    address=row.address,
                    detail=row.detail,
                )
                for row in reversed(rows)
            ]
