"""The same gallery on PostgreSQL, the team-server backend.

The server is the ``postgres_url`` fixture's: a throwaway cluster that the tests
start themselves, or the one ATELIER_TEST_POSTGRES_URL names, e.g.
postgresql+psycopg://user@127.0.0.1:5432/scratch. Each test works in a schema
of its own that it drops afterwards, so the database's other contents are safe.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from PIL import Image
from sqlalchemy import make_url, text

from storage import Gallery, ImageInput, NewGeneration, StorageError
from storage.db import make_engine, upgrade
from storage.models import Base


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    schema = f"atelier_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(postgres_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_migration_matches_the_models(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_round_trip(url: str, tmp_path: Path, new_generation: Callable[..., NewGeneration]) -> None:
    with Gallery(url=url, data_dir=tmp_path) as gallery:
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
