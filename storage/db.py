"""The process's database: its engine and its schema migrations; the only place that knows Alembic's API."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed number: the key of the PostgreSQL advisory lock that migrations hold.
_MIGRATION_LOCK = 0x61_74_65_6C  # "atel"


class Database:
    """One database for the whole process: its engine, made once, and its schema, migrated once.

    Build one at start-up and hand it to the services that use it
    (`Gallery(database=...)`, `Users(database=...)`), so they share one
    connection pool and the migrations run once, not once per service. Whoever
    built it closes it; the services given it leave it open.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def dialect(self) -> str:
        """The backend's name: "sqlite" or "postgresql" (the two the schema supports)."""
        return self.engine.dialect.name

    def __enter__(self) -> Database:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()


def open_or_share(service: str, *, url: str | None, database: Database | None) -> tuple[Database, bool]:
    """The database a service uses and whether the service owns it (closes it): `database`, else one opened at `url`."""
    if database is not None and url is None:
        return database, False
    if url is not None and database is None:
        return Database(url), True
    raise TypeError(f"{service} takes either url or database, not both and not neither.")


class DatabaseService:
    """A service on the process's `database` (left open) or on one it opens at `url` (closed by `close`)."""

    def __init__(self, *, url: str | None = None, database: Database | None = None) -> None:
        self._database, self._owns_database = open_or_share(type(self).__name__, url=url, database=database)
        self._engine = self._database.engine

    def __enter__(self) -> Any:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_database:
            self._database.close()


def make_engine(url: str) -> Engine:
    """Create an engine for any SQLAlchemy URL; SQLite connections get the pragmas below."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite leaves foreign keys off per connection, so ON DELETE CASCADE/SET NULL
    # would silently do nothing. WAL lets the gallery be read while a generation
    # lands; busy_timeout makes a second writer wait instead of failing at once;
    # synchronous=NORMAL is durable enough under WAL (a power cut may lose the
    # last commit, never corrupt the file).
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def upgrade(engine: Engine, *, revision: str = "head") -> None:
    """Migrate the database to `revision` (the newest by default); a no-op when it is already there."""
    with engine.begin() as connection:
        _one_at_a_time(connection)
        command.upgrade(_config(connection), revision)


def downgrade(engine: Engine, *, revision: str) -> None:
    """Migrate the database back to `revision`."""
    with engine.begin() as connection:
        _one_at_a_time(connection)
        command.downgrade(_config(connection), revision)


def _one_at_a_time(connection: Connection) -> None:
    """Make the migration one transaction that a second process starting at the same time waits for.

    Both then read the revision after the first has committed, so the second
    finds nothing to do instead of failing halfway through the same steps.
    """
    if connection.dialect.name == "sqlite":
        # Python's sqlite3 opens a transaction only before INSERT, UPDATE or
        # DELETE, so without this each ALTER TABLE would commit on its own and
        # a crash could leave a revision half done. IMMEDIATE takes the write
        # lock now (waiting out busy_timeout), not at the first write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        # DDL is transactional already; this lock (released at commit) orders two migrators.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's cookbook way to share a connection: env.py picks it up from
    # attributes, so no alembic.ini and no second engine are needed.
    config.attributes["connection"] = connection
    return config
