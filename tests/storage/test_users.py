"""Accounts on SQLite and PostgreSQL (conftest's ``db_url``): names, argon2 hashes, the admin flag."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from storage import RecordNotFound, StorageError, UserRecord, Users
from storage.db import downgrade, make_engine, upgrade


@pytest.fixture
def users(db_url: str) -> Iterator[Users]:
    with Users(url=db_url) as opened:
        yield opened


def stored_hashes(db_url: str) -> dict[str, str]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT name, password_hash FROM users")).all())
    finally:
        engine.dispose()


def test_add_user_then_verify(users: Users, db_url: str) -> None:
    before = datetime.now(timezone.utc)
    added = users.add_user("ada.l-1_x", "correct horse", admin=True)
    users.add_user("bob", "battery staple")

    assert added == users.get_user("ada.l-1_x")
    assert (added.name, added.is_admin) == ("ada.l-1_x", True)
    assert before <= added.created_at <= datetime.now(timezone.utc)
    assert users.count_users() == 2
    assert users.is_admin("ada.l-1_x") and not users.is_admin("bob") and not users.is_admin("carol")
    assert users.verify("ada.l-1_x", "correct horse")
    assert not users.verify("ada.l-1_x", "battery staple")
    assert not users.verify("bob", "correct horse")
    assert not users.verify("carol", "correct horse")
    # Only an argon2id hash is stored, salted: two of the same password differ.
    hashes = stored_hashes(db_url)
    assert all(h.startswith("$argon2id$") and "correct" not in h for h in hashes.values())


def test_records_hold_no_password() -> None:
    assert set(UserRecord.__dataclass_fields__) == {"name", "is_admin", "created_at"}


def test_set_password_replaces_the_old_one(users: Users) -> None:
    users.add_user("ada", "first password")

    changed = users.set_password("ada", "second password")

    assert changed == users.get_user("ada")
    assert users.verify("ada", "second password")
    assert not users.verify("ada", "first password")


NAME_RULE = "name must be 1 to 64 letters, digits, '.', '_' or '-', not"
PASSWORD_RULE = "password must be 8 to 1024 characters long."


@pytest.mark.parametrize(
    ("name", "password", "admin", "message"),
    [
        ("", "long enough", False, f"{NAME_RULE} ''."),
        ("a" * 65, "long enough", False, f"{NAME_RULE} '{'a' * 65}'."),
        ("ada lovelace", "long enough", False, f"{NAME_RULE} 'ada lovelace'."),
        ("ada/..", "long enough", False, f"{NAME_RULE} 'ada/..'."),
        ("adä", "long enough", False, f"{NAME_RULE} 'adä'."),
        ("ada\n", "long enough", False, f"{NAME_RULE} 'ada\\n'."),
        (None, "long enough", False, f"{NAME_RULE} None."),
        ("ada", "short", False, PASSWORD_RULE),
        ("ada", "seven77", False, PASSWORD_RULE),
        ("ada", "x" * 1025, False, PASSWORD_RULE),
        ("ada", None, False, "password must be a string, not NoneType."),
        ("ada", "long enough", "yes", "admin must be True or False, not 'yes'."),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(
    users: Users, name: object, password: object, admin: object, message: str
) -> None:
    with pytest.raises(StorageError) as raised:
        users.add_user(name, password, admin=admin)  # type: ignore[arg-type]
    assert str(raised.value) == message
    assert users.count_users() == 0


def test_the_longest_name_and_the_shortest_password_are_allowed(users: Users) -> None:
    users.add_user("a" * 64, "eight888")
    assert users.verify("a" * 64, "eight888")


def test_a_name_is_taken_once(users: Users) -> None:
    users.add_user("ada", "first password")
    with pytest.raises(StorageError, match=r"^An account named 'ada' already exists; choose another name\.$"):
        users.add_user("ada", "other password", admin=True)
    assert users.count_users() == 1
    assert users.verify("ada", "first password") and not users.is_admin("ada")


def test_set_password_refuses_unknown_names_and_short_passwords(users: Users) -> None:
    users.add_user("ada", "first password")
    with pytest.raises(RecordNotFound, match=r"^No account is named 'bob'\.$"):
        users.set_password("bob", "second password")
    with pytest.raises(StorageError, match=r"^password must be 8 to 1024"):
        users.set_password("ada", "seven77")
    with pytest.raises(RecordNotFound, match=r"^No account is named 'bob'\.$"):
        users.get_user("bob")
    assert users.verify("ada", "first password")
    assert users.count_users() == 1


def test_verify_never_raises_on_what_a_login_form_sends(users: Users) -> None:
    users.add_user("ada", "first password")
    for name, password in [("", ""), ("ada", ""), ("a b", "x"), ("ada", "x" * 5000), (None, None), ("ada", None)]:
        assert users.verify(name, password) is False  # type: ignore[arg-type]


def test_an_unknown_name_costs_the_same_hashing_as_a_known_one(users: Users) -> None:
    users.add_user("ada", "first password")
    users.verify("nobody", "warm up")  # the decoy hash is made once, on first use

    def slowest(name: str) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            users.verify(name, "wrong password")
            times.append(time.perf_counter() - started)
        return min(times)

    known, unknown = slowest("ada"), slowest("nobody")
    # argon2 dominates both; a lookup that skipped it would be ~100x faster.
    assert unknown > known / 3


def test_migration_0003_adds_and_removes_only_the_users_table(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine, revision="0002")
        with engine.connect() as connection:
            before = set(inspect(connection).get_table_names())
        upgrade(engine, revision="0003")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) == before | {"users"}
            assert MigrationContext.configure(connection).get_current_revision() == "0003"
        with Users(url=db_url) as users:
            users.add_user("ada", "first password")
        downgrade(engine, revision="0002")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) == before
        upgrade(engine)
        with Users(url=db_url) as users:
            assert users.count_users() == 0
    finally:
        engine.dispose()
