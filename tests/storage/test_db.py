from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

import storage.db
from storage import Database, Gallery, Users
from storage.db import make_engine, upgrade
from storage.models import Base, include_name


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/gallery.db")
    yield engine
    engine.dispose()


def test_upgrade_from_empty_matches_the_models(engine: Engine) -> None:
    upgrade(engine)

    with engine.connect() as connection:
        # The search table that only the migrations know (storage.models.include_name) is left out.
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0007"
        assert {name for name in inspect(connection).get_table_names() if include_name(name, "table", {})} == {
            "alembic_version",
            "generations",
            "images",
            "tags",
            "boards",
            "board_items",
            "users",
            "login_sessions",
            "login_failures",
            "audit_log",
        }


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text(_INSERT_GENERATION))

    upgrade(engine)

    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM generations")) == 1
        assert MigrationContext.configure(connection).get_current_revision() == "0007"


def test_every_sqlite_connection_gets_the_pragmas(engine: Engine) -> None:
    for _ in range(2):  # a fresh connection each time, not a pooled one
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        engine.dispose()


def test_foreign_keys_cascade_and_set_null(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text(_INSERT_GENERATION))
        parent = connection.scalar(text("SELECT max(id) FROM generations"))
        connection.execute(text(_INSERT_GENERATION.replace("NULL)", f"{parent})")))
        child = connection.scalar(text("SELECT max(id) FROM generations"))
        connection.execute(text(_INSERT_IMAGE), {"generation_id": parent})

    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(_INSERT_IMAGE), {"generation_id": 999})

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM generations WHERE id = :id"), {"id": parent})
        assert connection.scalar(text("SELECT count(*) FROM images")) == 0
        assert connection.scalar(text("SELECT parent_id FROM generations WHERE id = :id"), {"id": child}) is None


def test_check_constraints_reject_unknown_words(engine: Engine) -> None:
    upgrade(engine)
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(_INSERT_GENERATION.replace("'running'", "'done'")))


def test_one_database_serves_the_gallery_and_the_accounts_and_migrates_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrades: list[Engine] = []
    original = storage.db.upgrade
    monkeypatch.setattr(storage.db, "upgrade", lambda engine: upgrades.append(engine) or original(engine))

    with Database(f"sqlite:///{tmp_path}/gallery.db") as database:
        gallery = Gallery(database=database, data_dir=tmp_path, lease_seconds=5)
        users = Users(database=database)
        users.add_user("ann", "a long password")
        gallery.close()
        users.close()

        # Closing the services left the database they were given open and working.
        assert upgrades == [database.engine]
        assert (database.url, database.dialect) == (f"sqlite:///{tmp_path}/gallery.db", "sqlite")
        with Users(database=database) as again:
            assert again.count_users() == 1


def test_a_service_given_a_url_opens_and_closes_a_database_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    original = Database.close
    monkeypatch.setattr(Database, "close", lambda self: closed.append(self.url) or original(self))
    url = f"sqlite:///{tmp_path}/gallery.db"

    Gallery(url=url, data_dir=tmp_path).close()
    Users(url=url).close()

    assert closed == [url, url]


@pytest.mark.parametrize("service", [Gallery, Users])
def test_a_service_takes_a_url_or_a_database_not_both(tmp_path: Path, service: type) -> None:
    extra = {"data_dir": tmp_path} if service is Gallery else {}
    url = f"sqlite:///{tmp_path}/gallery.db"
    with Database(url) as database:
        for given in ({}, {"url": url, "database": database}):
            with pytest.raises(TypeError, match=rf"^{service.__name__} takes either url or database, not both"):
                service(**given, **extra)


_INSERT_GENERATION = """
INSERT INTO generations (created_at, user, task, model, params, prompt, negative_prompt, seed,
    sampler, num_inference_steps, guidance_scale, width, height, batch_size, status, timings,
    environment, parent_id)
VALUES ('2025-01-01 00:00:00', 'ann', 'txt2img', 'embedded', '{}', 'p', '', 4294967295,
    'Euler a', 20, 7.0, 64, 64, 1, 'running', '{}', '{}', NULL)
"""

_INSERT_IMAGE = """
INSERT INTO images (generation_id, role, position, seed, sha256, path, width, height, thumb_path, created_at)
VALUES (:generation_id, 'output', 0, 1, 'ab', 'images/ab/ab.png', 64, 64, 'thumbs/ab/ab.webp', '2025-01-01 00:00:00')
"""
