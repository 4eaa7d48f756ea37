"""Accounts: names, password hashes and the admin flag, one short transaction per method.

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher`, RFC 9106
parameters); only the hash is stored, and checking one is the library's
constant-time comparison. Hashing runs outside every transaction, so a login
never holds SQLite's write lock for the tens of milliseconds argon2 takes.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database, DatabaseService
from storage.errors import RecordNotFound, StorageError
from storage.models import LoginSession, User, utcnow
from storage.validators import check_flag

MIN_PASSWORD = 8
# argon2 takes any length, but a login form should not make the server hash megabytes.
MAX_PASSWORD = 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class UserRecord:
    """An account as callers see it; the password hash never leaves this module."""

    name: str
    is_admin: bool
    created_at: datetime


class Users(DatabaseService):
    """The studio's accounts, in the gallery's database (migration 0003).

    With no account the studio is single-user; with one or more, every page
    and API route asks for a login (webui/app.py).

    Give it the process's `database`, or a `url` to open (and migrate) one of
    its own, which `close` then closes; a database given stays open.
    """

    def __init__(self, *, url: str | None = None, database: Database | None = None) -> None:
        super().__init__(url=url, database=database)
        self._hasher = PasswordHasher()

    def add_user(self, name: str, password: str, *, admin: bool = False) -> UserRecord:
        # 1. Check inputs, then hash, before any transaction.
        _check_name(name)
        _check_password(password)
        check_flag(admin, field="admin")
        password_hash = self._hasher.hash(password)
        # 2. Insert; a unique name is the database's to enforce under concurrency.
        taken = StorageError(f"An account named {name!r} already exists; choose another name.")
        try:
            with Session(self._engine) as session, session.begin():
                if session.scalar(select(User.id).where(User.name == name)) is not None:
                    raise taken
                row = User(name=name, password_hash=password_hash, is_admin=admin, created_at=utcnow())
                session.add(row)
                session.flush()
                return _record(row)
        except IntegrityError:  # added by another process between the check and the insert
            raise taken from None

    def set_password(self, name: str, password: str) -> UserRecord:
        """Change the password and end every login session of the account (a stolen one included)."""
        _check_name(name)
        _check_password(password)
        password_hash = self._hasher.hash(password)
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(User)
                .where(User.name == name)
                .values(password_hash=password_hash)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise RecordNotFound(f"No account is named {name!r}.")
            row = session.scalars(select(User).where(User.name == name)).one()
            session.execute(delete(LoginSession).where(LoginSession.user_id == row.id))
            return _record(row)

    def verify(self, name: str, password: str) -> bool:
        """Whether `password` is this account's; False for any name without one, after the same hashing work.

        Never raises for bad input: it is what a login form sends.
        """
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        stored = None
        if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
            with Session(self._engine) as session, session.begin():
                stored = session.scalar(select(User.password_hash).where(User.name == name))
        # An unknown name checks against a hash of nothing anyone knows, so
        # timing does not tell which names have accounts.
        try:
            return self._hasher.verify(stored or self._decoy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def get_user(self, name: str) -> UserRecord:
        _check_name(name)
        with Session(self._engine) as session, session.begin():
            row = session.scalar(select(User).where(User.name == name))
            if row is None:
                raise RecordNotFound(f"No account is named {name!r}.")
            return _record(row)

    def count_users(self) -> int:
        with Session(self._engine) as session, session.begin():
            return session.scalar(select(func.count()).select_from(User)) or 0

    def is_admin(self, name: str) -> bool:
        """Whether this account is an admin; False for a name without an account."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            return False
        with Session(self._engine) as session, session.begin():
            return bool(session.scalar(select(User.is_admin).where(User.name == name)))

    @functools.cached_property
    def _decoy(self) -> str:
        return self._hasher.hash(secrets.token_urlsafe(32))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise StorageError(f"name must be 1 to 64 letters, digits, '.', '_' or '-', not {name!r}.")
    return name


def _check_password(password: object) -> str:
    if not isinstance(password, str):
        raise StorageError(f"password must be a string, not {type(password).__name__}.")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise StorageError(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long.")
    return password


def _record(row: User) -> UserRecord:
    return UserRecord(name=row.name, is_admin=row.is_admin, created_at=row.created_at)
