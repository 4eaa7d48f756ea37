"""The same gallery on PostgreSQL, the team-server backend.

The server is the ``postgres_url`` fixture's: a throwaway cluster that the tests
start themselves, or the one ATELIER_TEST_POSTGRES_URL names, e.g.
postgresql+psycopg://user@127.0.0.1:5432/scratch. Each test works in a schema
of its own (conftest's ``pg_url``) that it drops afterwards, so the database's
other contents are safe. The review, search and migration tests run here too,
through conftest's ``any_gallery`` and ``db_url``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from PIL import Image

from storage import Gallery, ImageInput, NewGeneration, StorageError
from storage.db import make_engine, upgrade
from storage.models import Base, include_name


def test_migration_matches_the_models(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        upgrade(engine)
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_round_trip(pg_url: str, tmp_path: Path, new_generation: Callable[..., NewGeneration]) -> None:
    with Gallery(url=pg_url, data_dir=tmp_path) as gallery:
        started = gallery.start(new_generation(seed=2**32 - 1))
        finished = gallery.finish(
            started.id,
            images=[ImageInput("output", Image.new("RGB", (64, 64), "red"), seed=2**32 - 1)],
            environment={"device": "cuda"},
            timings={"run_s": 1.5},
            duration_ms=1500,
        )
        cancelled = gallery.start(new_generation(parent_id=started.id))
        gallery.fail(cancelled.id, status="cancelled", error=None, environment={}, timings={}, duration_ms=None)

        assert gallery.get(started.id) == finished
        assert finished.created_at.tzinfo == timezone.utc and finished.seed == 2**32 - 1
        assert [r.id for r in gallery.list(limit=1)] == [cancelled.id]
        assert [r.id for r in gallery.list(limit=1, before_id=cancelled.id)] == [started.id]
        assert gallery.count() == 2
        with pytest.raises(StorageError, match="already cancelled"):
            gallery.fail(cancelled.id, status="failed", error="x", environment={}, timings={}, duration_ms=None)
