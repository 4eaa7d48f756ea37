"""ORM models. The schema itself is owned by migrations/; these must match it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("output", "input", "mask", "control", "control_source", "reference")
# A job's life (migration 0004): queued -> running -> succeeded | failed | cancelled | interrupted.
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
REVIEWS = ("none", "approved", "rejected")

# Full-text search lives in objects the ORM cannot describe: an FTS5 virtual
# table (and the shadow tables FTS5 keeps for it) on SQLite, a GIN expression
# index on PostgreSQL. Migrations own them alone; `include_name` keeps
# autogenerate and the schema comparison from proposing to drop them.
SEARCH_TABLE = "generations_fts"
SEARCH_INDEX = "ix_generations_search"
_SEARCH_OBJECTS = frozenset(
    {SEARCH_INDEX, SEARCH_TABLE, *(f"{SEARCH_TABLE}_{shadow}" for shadow in ("data", "idx", "docsize", "config"))}
)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's `include_name` hook: False for the search objects the migrations own."""
    return name not in _SEARCH_OBJECTS


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every backend.

    SQLite stores no offset and hands back naive values; PostgreSQL hands back
    the session's zone. Without this, a record read back would not equal the one
    that was written.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("Timestamps must be timezone-aware.")
        return None if value is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Seed(TypeDecorator[int]):
    """A 64-bit unsigned seed (0 to 2**64 - 1) in a signed BIGINT column, bit for bit.

    Seeds are 64-bit (ComfyUI's, Fooocus's; issue 19) and SQLite's INTEGER
    and PostgreSQL's BIGINT are signed: a seed from 2**63 up is stored as its
    two's-complement negative and read back as itself. Every seed below 2**63
    (all that were stored before) is stored as it always was, so the column
    needs no migration; only someone reading the raw column sees the big
    seeds as negative numbers. NUMERIC would not do: SQLite turns an integer
    past 2**63 - 1 into a float.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> int | None:
        return None if value is None else value - 2**64 if value >= 2**63 else value

    def process_result_value(self, value: int | None, dialect: Dialect) -> int | None:
        return None if value is None else value + 2**64 if value < 0 else value


def one_of(column: str, values: tuple[str, ...]) -> str:
    """SQL for a CHECK that a column holds one of a few fixed words."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    # Named constraints let later SQLite batch migrations find and alter them.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UtcDateTime}


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (
        CheckConstraint(one_of("status", STATUSES), name="status"),
        CheckConstraint(one_of("review", REVIEWS), name="review"),
        # Fairness reads each user's latest start (storage/queue.py).
        Index("ix_generations_user_started_at", "user", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    user: Mapped[str] = mapped_column(String(255), index=True)
    task: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(512), index=True)
    model_revision: Mapped[str | None] = mapped_column(String(255))
    # The full request as the pipelines serialised it; a rerun is rebuilt from this alone.
    params: Mapped[dict[str, Any]]
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Seed)
    sampler: Mapped[str] = mapped_column(String(64))
    num_inference_steps: Mapped[int]
    guidance_scale: Mapped[float] = mapped_column(Float)
    width: Mapped[int]
    height: Mapped[int]
    batch_size: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None]
    timings: Mapped[dict[str, Any]]
    environment: Mapped[dict[str, Any]]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"), index=True)
    # Review state (migration 0002). The server defaults fill rows older than it.
    starred: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0", index=True)
    review: Mapped[str] = mapped_column(String(16), default="none", server_default="none", index=True)
    review_note: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(255))
    reviewed_at: Mapped[datetime | None]
    # The queue (migration 0004). created_at is when the job was queued (or
    # started, for one that never waited); started_at when a worker took it.
    # A running job is alive while its lease has not expired; the owner is the
    # worker that renews it (storage/queue.py).
    started_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    # Prompt adherence (migration 0006): the score in [0, 1] the gallery sorts by, and what
    # the scorer matched or why it gave none. NULL for generations never scored.
    adherence: Mapped[float | None] = mapped_column(Float, index=True)
    adherence_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    images: Mapped[list[Image]] = relationship(
        back_populates="generation",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint(one_of("role", ROLES), name="role"),
        UniqueConstraint("generation_id", "role", "position"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    position: Mapped[int]
    seed: Mapped[int | None] = mapped_column(Seed)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(255))
    width: Mapped[int]
    height: Mapped[int]
    thumb_path: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    generation: Mapped[Generation] = relationship(back_populates="images")


class Tag(Base):
    __tablename__ = "tags"
    # The primary key is the unique (generation, tag) pair; the index on tag
    # also carries generation_id, so a tag filter never visits this table's rows.
    __table_args__ = (Index("ix_tags_tag", "tag", "generation_id"),)

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class Board(Base):
    __tablename__ = "boards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BoardItem(Base):
    __tablename__ = "board_items"

    board_id: Mapped[int] = mapped_column(ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True)
    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """An account (migration 0003). Only an argon2 hash of the password is kept."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoginSession(Base):
    """A logged-in browser or client (migration 0006): only a hash of its cookie's token is kept."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class LoginFailures(Base):
    """Failed logins in a row for one user name or one client address (migration 0006).

    Names without an account get rows too, so a refusal looks the same for both.
    """

    __tablename__ = "login_failures"
    __table_args__ = (CheckConstraint(one_of("kind", ("user", "address")), name="kind"),)

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column()


class AuditEntry(Base):
    """One action that cannot be undone or changes access (migration 0006); triggers refuse edits."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
