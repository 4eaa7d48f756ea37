"""Logins that resist guessing, sessions and the audit log, on SQLite and PostgreSQL (conftest's ``db_url``).

A clock the test moves stands in for time, so the back-off schedule is checked
exactly; the HTTP tests (tests/webui/test_security.py) check it in real time.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from storage import Database, UserRecord, Users
from storage.audit import AuditLog
from storage.errors import StorageError
from storage.logins import LoginGuard, LoginPolicy, Refusal, Sessions

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    database: Database
    users: Users
    audit: AuditLog
    clock: Clock

    def guard(self, policy: LoginPolicy | None = None) -> LoginGuard:
        return LoginGuard(users=self.users, database=self.database, audit=self.audit, policy=policy, clock=self.clock)


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    with Database(db_url) as database:
        users = Users(database=database)
        users.add_user("ann", "ann's password")
        users.add_user("root", "root's password", admin=True)
        yield World(database, users, AuditLog(database=database), Clock())


def test_a_right_password_gets_in_and_a_wrong_one_is_one_sentence(world: World) -> None:
    guard = world.guard()
    assert guard.check("ann", "ann's password", "10.0.0.1") == world.users.get_user("ann")
    refused = guard.check("ann", "wrong password", "10.0.0.1")
    assert refused == Refusal("wrong", "Incorrect name or password.")
    # Whatever a form may send: never an exception.
    for name, password in [(None, "x"), ("ann", None), ("a" * 65, "x"), ("ann", "p" * 5000), ("", "")]:
        assert isinstance(guard.check(name, password, "10.0.0.1"), Refusal)


def test_colleagues_behind_one_address_who_log_in_at_once_all_get_in(world: World) -> None:
    """An office behind one NAT at nine o'clock: right passwords arriving together are not a guesser."""
    policy = LoginPolicy(address_free_failures=2)
    guard = world.guard(policy)
    names = [f"colleague{n}" for n in range(8)]
    for name in names:
        world.users.add_user(name, f"{name}'s password")
    start, outcomes = threading.Barrier(len(names)), {}

    def log_in(name: str) -> None:
        start.wait()
        outcomes[name] = guard.check(name, f"{name}'s password", "192.0.2.7")

    threads = [threading.Thread(target=log_in, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {name: getattr(outcome, "name", outcome) for name, outcome in outcomes.items()} == {n: n for n in names}
    # Wrong passwords from that address still count, and slow it once past its free ones.
    for _ in range(2):
        assert guard.check("ann", "guess", "192.0.2.7").reason == "wrong"
    assert guard.check("root", "guess", "192.0.2.7").reason == "wait"


def test_failures_slow_down_exponentially_then_lock_until_an_admin_unlocks(world: World) -> None:
    policy = LoginPolicy(free_failures=3, lock_after=8, base_delay=2.0, address_free_failures=100)
    guard, clock = world.guard(policy), world.clock
    for _ in range(3):  # the free ones, back to back
        assert guard.check("ann", "guess", "10.0.0.9").reason == "wrong"
    waits = []
    for _ in range(5):  # the 4th to 8th failures: each must wait 2, 4, 8, 16, 32 s after the last
        refused = guard.check("ann", "ann's password", "10.0.0.9")  # even the right password waits
        assert refused.reason == "wait"
        waits.append(refused.retry_after)
        clock.advance(refused.retry_after - 0.5)
        assert guard.check("ann", "guess", "10.0.0.9").reason == "wait"  # half a second early: still waiting
        clock.advance(0.5)
        assert guard.check("ann", "guess", "10.0.0.9").reason == "wrong"
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0]

    # The 8th failure locked the name: a day later, from anywhere, with the right password, still no.
    clock.advance(86400)
    locked = guard.check("ann", "ann's password", "10.0.0.77")
    assert locked.reason == "locked"
    assert locked.message == (
        "Too many failed logins for ann: the account is locked until an admin runs `atelier user unlock ann`."
    )
    assert guard.is_locked("ann")
    locks = [e for e in world.audit.entries() if e.action == "user.locked"]
    assert [(e.target, e.address, e.detail) for e in locks] == [("ann", "10.0.0.9", "8 failed logins in a row")]

    assert guard.unlock("ann") and not guard.is_locked("ann")
    assert guard.check("ann", "ann's password", "10.0.0.77") == world.users.get_user("ann")
    # Other names were never slowed by ann's lock.
    assert guard.check("root", "root's password", "10.0.0.78").name == "root"


def test_an_address_spraying_many_names_is_slowed(world: World) -> None:
    policy = LoginPolicy(free_failures=5, lock_after=10, address_free_failures=4, base_delay=1.0)
    guard, clock = world.guard(policy), world.clock
    for name in ("a1", "a2", "a3", "a4"):
        assert guard.check(name, "password1", "203.0.113.5").reason == "wrong"
    refused = guard.check("a5", "password1", "203.0.113.5")
    assert (refused.reason, refused.retry_after) == ("wait", 1.0)
    # Another address is not slowed by this one; a right password does not wipe the sprayer's record.
    assert guard.check("ann", "ann's password", "198.51.100.7").name == "ann"
    clock.advance(1.0)
    assert guard.check("a5", "password1", "203.0.113.5").reason == "wrong"
    assert guard.check("a6", "password1", "203.0.113.5").retry_after == 2.0
    # A quiet day and the address is forgiven.
    clock.advance(86401)
    assert guard.check("a7", "password1", "203.0.113.5").reason == "wrong"


def test_unknown_names_are_counted_and_locked_like_known_ones(world: World) -> None:
    policy = LoginPolicy(free_failures=2, lock_after=4, base_delay=1.0, address_free_failures=100)
    guard, clock = world.guard(policy), world.clock

    def answers(name: str, address: str) -> list[tuple[str, float]]:
        seen = []
        for _ in range(6):
            refused = guard.check(name, "guess", address)
            seen.append((refused.reason, refused.retry_after))
            clock.advance(refused.retry_after)
        return seen

    assert answers("ann", "10.1.0.1") == answers("nobody", "10.1.0.2")


def test_threads_cannot_share_one_free_attempt(world: World) -> None:
    # Eight threads at once against a name with one free attempt left: one password check, the rest wait.
    policy = LoginPolicy(free_failures=5, lock_after=10, base_delay=60.0, address_free_failures=100)
    guard = world.guard(policy)
    for _ in range(4):
        guard.check("ann", "guess", "10.2.0.1")
    results: list[Refusal | UserRecord] = []
    start = threading.Barrier(8)

    def attempt(n: int) -> None:
        start.wait()
        results.append(guard.check("ann", "guess", f"10.2.1.{n}"))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.reason for r in results) == ["wait"] * 7 + ["wrong"]


def test_known_and_unknown_names_take_the_same_time(world: World) -> None:
    # No back-off here: only the password check's own timing is compared.
    guard = world.guard(LoginPolicy(free_failures=998, lock_after=999, address_free_failures=998))
    guard.check("nobody", "warm up", "10.3.0.1")  # the decoy hash is made once, on first use
    timings: dict[str, list[float]] = {"ann": [], "nobody": []}
    order = ["ann", "nobody"] * 20
    random.Random(17).shuffle(order)  # interleaved, so a busy moment hits both alike
    for name in order:
        started = time.perf_counter()
        assert guard.check(name, "not the password", "10.3.0.1").reason == "wrong"
        timings[name].append(time.perf_counter() - started)
    known, unknown = statistics.median(timings["ann"]), statistics.median(timings["nobody"])
    # Without the decoy an unknown name answers in well under a tenth of the time (no argon2 at all);
    # medians of 20 interleaved tries stay within half of each other even on a busy two-core machine.
    assert 2 / 3 < unknown / known < 3 / 2, (known, unknown)


def test_sessions_expire_end_on_logout_and_on_a_password_change(world: World) -> None:
    sessions = Sessions(database=world.database, hours=2, clock=world.clock)
    first, second = sessions.start("ann", address="10.4.0.1"), sessions.start("ann", address="10.4.0.2")
    root = sessions.start("root", address="10.4.0.3")
    assert first != second and sessions.user(first) == sessions.user(second) == "ann"
    assert sessions.user("a" * 43) is None and sessions.user(None) is None

    sessions.end(first)  # logout: this session only
    assert sessions.user(first) is None and sessions.user(second) == "ann"

    third = sessions.start("ann", address="10.4.0.1")
    world.users.set_password("ann", "a new password")  # every session of ann's ends, root's stays
    assert sessions.user(second) is None and sessions.user(third) is None and sessions.user(root) == "root"

    world.clock.advance(2 * 3600 - 1)
    assert sessions.user(root) == "root"
    world.clock.advance(1)
    assert sessions.user(root) is None
    assert sessions.purge_expired() == 1
    with pytest.raises(StorageError, match="No account is named 'ghost'"):
        sessions.start("ghost", address="10.4.0.1")


def test_only_a_hash_of_the_token_is_stored(world: World) -> None:
    token = Sessions(database=world.database).start("ann", address="10.5.0.1")
    with world.database.engine.connect() as connection:
        stored = connection.execute(text("SELECT token_sha256 FROM login_sessions")).scalar_one()
    assert token not in stored and len(stored) == 64


def test_the_audit_log_is_append_only_in_the_database(world: World) -> None:
    audit = world.audit
    audit.record(
        "delete", actor="root", target="generation 3", address="10.6.0.1", detail="made by ann; admin override"
    )
    audit.record("user.unlock", actor="ada (command line)", target="ann")
    before = audit.entries()
    assert [(e.action, e.actor, e.target, e.address) for e in before] == [
        ("delete", "root", "generation 3", "10.6.0.1"),
        ("user.unlock", "ada (command line)", "ann", "local"),
    ]
    assert not hasattr(audit, "delete") and not hasattr(audit, "update")
    for statement in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
        with pytest.raises(DatabaseError, match="the audit log is append-only"):
            with world.database.engine.begin() as connection:
                connection.execute(text(statement))
    assert audit.entries() == before
    assert [e.id for e in audit.entries(since=before[1].at)] == [before[1].id]
    with pytest.raises(StorageError, match="action must be one of"):
        audit.record("rewrite", actor="root", target="history")


def test_an_ipv6_holder_counts_as_one_address_for_its_whole_64(world: World) -> None:
    policy = LoginPolicy(free_failures=50, lock_after=60, address_free_failures=2, base_delay=5.0)
    guard = world.guard(policy)
    assert guard.check("x1", "guess", "2001:db8:1:2::1").reason == "wrong"
    assert guard.check("x2", "guess", "2001:db8:1:2:ffff::9").reason == "wrong"
    assert guard.check("x3", "guess", "2001:db8:1:2:aaaa::3").reason == "wait"  # same /64: slowed
    assert guard.check("x4", "guess", "2001:db8:1:3::1").reason == "wrong"  # the next /64 is someone else
    # An IPv4 client seen through an IPv6 socket is the same client as over IPv4.
    assert guard.check("x5", "guess", "::ffff:192.0.2.7").reason == "wrong"
    assert guard.check("x6", "guess", "192.0.2.7").reason == "wrong"
    assert guard.check("x7", "guess", "192.0.2.7").reason == "wait"
