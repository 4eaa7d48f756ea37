"""Logins that resist guessing, and the sessions they open.

`LoginGuard.check(name, password, address)` is the one door for a password,
whatever carries it (the login form, an API's Basic auth): it slows failed
attempts per user name and per client address with an exponential back-off,
locks a name after `lock_after` failures in a row until an admin unlocks it,
and only then checks the password. The counters live in the database, so
they hold across threads, processes and restarts.

Every attempt at a name is counted as a failure *before* the password is
checked, in one transaction that holds the rows' write lock, so two threads
cannot both slip through one free attempt at that name; a right password
then clears the name's count. An address's count grows only once a password
proves wrong: colleagues behind one address who log in at the same moment
are not a guesser (counting them in advance refused such a burst with 429). A name without an account is counted, slowed and
locked exactly like one with, and checked against a decoy hash, so neither
the answers nor their timing tell which names exist.

`Sessions` are the studio's own login sessions: a random token in the
browser's cookie, only its sha256 in the database, an expiry, and an end
on logout or when the password changes (`Users.set_password`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.audit import AuditLog
from storage.db import Database
from storage.errors import StorageError
from storage.models import LoginFailures, LoginSession, User, utcnow
from storage.users import NAME_PATTERN, UserRecord, Users

MAX_ADDRESS = 64


@dataclass(frozen=True)
class LoginPolicy:
    """How fast failed logins slow down; the defaults suit a team's studio."""

    free_failures: int = 5  # per name: failures in a row before the back-off starts
    lock_after: int = 10  # per name: failures in a row that lock it until an admin unlocks it
    address_free_failures: int = 10  # per client address (an office behind one NAT mistypes too)
    base_delay: float = 1.0  # seconds after the first slowed failure; doubles with each one after
    max_delay: float = 900.0
    address_memory: float = 86400.0  # an address's failures are forgotten after this long without one

    def __post_init__(self) -> None:
        if not 0 <= self.free_failures < self.lock_after:
            raise StorageError(f"lock_after must be more than free_failures ({self.free_failures}).")
        if not 0 < self.base_delay <= self.max_delay:
            raise StorageError("base_delay must be more than 0 seconds and at most max_delay.")

    def delay(self, failures: int, *, free: int) -> float:
        """Seconds that must pass after the last of `failures` failures before the next attempt."""
        if failures < free:
            return 0.0
        return min(self.base_delay * 2.0 ** (failures - free), self.max_delay)


@dataclass(frozen=True)
class Refusal:
    """A login that did not get in: `reason` is "wrong", "wait" or "locked"; `message` is for the person."""

    reason: str
    message: str
    retry_after: float = 0.0


WRONG = Refusal("wrong", "Incorrect name or password.")


class LoginGuard:
    """Checks a name and password from a client address, throttled; see the module's docstring."""

    def __init__(
        self,
        *,
        users: Users,
        database: Database,
        audit: AuditLog,
        policy: LoginPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._users = users
        self._engine = database.engine
        self._audit = audit
        self.policy = policy or LoginPolicy()
        self._clock = clock

    def check(self, name: object, password: object, address: str) -> UserRecord | Refusal:
        address = address_key(address)
        name_key = name if isinstance(name, str) and NAME_PATTERN.fullmatch(name) else None
        # 1. Claim the attempt (or refuse it) before any hashing.
        claimed = self._claim(name_key, address)
        if isinstance(claimed, Refusal):
            return claimed
        # 2. The password, against a decoy for unknown names (Users.verify).
        if not self._users.verify(name, password):  # type: ignore[arg-type]
            with Session(self._engine) as session, session.begin():
                session.execute(
                    update(LoginFailures)
                    .where(LoginFailures.kind == "address", LoginFailures.key == address)
                    .values(failures=LoginFailures.failures + 1, last_failure_at=self._clock())
                )
            if name_key is not None and claimed == self.policy.lock_after:  # the failure that locked it
                detail = f"{claimed} failed logins in a row"
                self._audit.record("user.locked", actor=name_key, target=name_key, address=address, detail=detail)
            return WRONG
        # 3. In: the name's count is cleared.
        with Session(self._engine) as session, session.begin():
            session.execute(delete(LoginFailures).where(LoginFailures.kind == "user", LoginFailures.key == name_key))
        return self._users.get_user(name_key)  # type: ignore[arg-type]

    def unlock(self, name: str) -> bool:
        """Clear a name's failed logins (and so its lock); whether it had any."""
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                delete(LoginFailures)
                .where(LoginFailures.kind == "user", LoginFailures.key == name)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def is_locked(self, name: str) -> bool:
        with Session(self._engine) as session, session.begin():
            failures = session.scalar(
                select(LoginFailures.failures).where(LoginFailures.kind == "user", LoginFailures.key == name)
            )
        return (failures or 0) >= self.policy.lock_after

    def _claim(self, name: str | None, address: str) -> Refusal | int:
        """A refusal, or the name's failures in a row counting this attempt (0 for no name)."""
        policy, now = self.policy, self._clock()
        keys = [("address", address)] + ([("user", name)] if name is not None else [])
        with Session(self._engine) as session, session.begin():
            # The insert takes SQLite's write lock (PostgreSQL: FOR UPDATE below) before anything is read,
            # so the read, the decision and the count are one step for every thread and process.
            dialect = sqlite if self._engine.dialect.name == "sqlite" else postgresql
            for kind, key in keys:
                session.execute(
                    dialect.insert(LoginFailures)
                    .values(kind=kind, key=key, failures=0, last_failure_at=now)
                    .on_conflict_do_nothing()
                )
            rows = {
                row.kind: row
                for row in session.scalars(
                    select(LoginFailures)
                    .where(LoginFailures.kind.in_([k for k, _ in keys]), LoginFailures.key.in_([v for _, v in keys]))
                    .with_for_update()
                )
                if (row.kind, row.key) in keys
            }
            by_address, by_name = rows["address"], rows.get("user")
            if (now - by_address.last_failure_at).total_seconds() > policy.address_memory:
                by_address.failures = 0
            if by_name is not None and by_name.failures >= policy.lock_after:
                return Refusal(
                    "locked",
                    f"Too many failed logins for {name}: the account is locked until an admin runs "
                    f"`atelier user unlock {name}`.",
                )
            wait = policy.delay(by_address.failures, free=policy.address_free_failures) - _since(by_address, now)
            if by_name is not None:
                wait = max(wait, policy.delay(by_name.failures, free=policy.free_failures) - _since(by_name, now))
            if wait > 0:
                return Refusal("wait", f"Too many failed logins; try again in {wait:.0f} s.", retry_after=wait)
            if by_name is None:
                return 0
            by_name.failures += 1
            by_name.last_failure_at = now
            return by_name.failures


def address_key(address: object) -> str:
    """The key an address's failures count under: an IPv6 address's /64, since one holder has all of it."""
    text = str(address)[:MAX_ADDRESS] or "unknown"
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _since(row: LoginFailures, now: datetime) -> float:
    return (now - row.last_failure_at).total_seconds()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Sessions:
    """Login sessions: `start` gives a token for the cookie, `user` reads it back until it expires or ends."""

    def __init__(self, *, database: Database, hours: float = 12.0, clock: Callable[[], datetime] = utcnow) -> None:
        if not hours > 0:
            raise StorageError(f"session hours must be more than 0; got {hours!r}.")
        self._engine = database.engine
        self.lifetime = timedelta(hours=hours)
        self._clock = clock

    def start(self, name: str, *, address: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            user_id = session.scalar(select(User.id).where(User.name == name))
            if user_id is None:
                raise StorageError(f"No account is named {name!r}.")
            session.add(
                LoginSession(
                    token_sha256=token_sha256(token),
                    user_id=user_id,
                    address=str(address)[:MAX_ADDRESS],
                    created_at=now,
                    expires_at=now + self.lifetime,
                )
            )
        return token

    def user(self, token: object) -> str | None:
        """The name logged in with this token, or None (no such session, ended, or expired)."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            return None
        with Session(self._engine) as session, session.begin():
            found = session.execute(
                select(User.name, LoginSession.expires_at)
                .join(User, User.id == LoginSession.user_id)
                .where(LoginSession.token_sha256 == token_sha256(token))
            ).first()
        if found is None or found.expires_at <= self._clock():
            return None
        return found.name

    def end(self, token: object) -> None:
        if not isinstance(token, str):
            return
        with Session(self._engine) as session, session.begin():
            session.execute(delete(LoginSession).where(LoginSession.token_sha256 == token_sha256(token)))

    def purge_expired(self) -> int:
        with Session(self._engine) as session, session.begin():
            result = session.execute(delete(LoginSession).where(LoginSession.expires_at <= self._clock()))
            return result.rowcount  # type: ignore[attr-defined]
