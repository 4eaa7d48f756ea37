"""Migration 0002 on a database that already holds generations, on SQLite and PostgreSQL (conftest's ``db_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, insert, inspect, select, text

from storage import Gallery
from storage.db import downgrade, make_engine, upgrade

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def generation(n: int, *, prompt: str, parent_id: int | None = None) -> dict[str, Any]:
    params = {"task": "txt2img", "prompt": prompt, "seed": n}
    return {
        "id": n, "created_at": T0 + timedelta(minutes=n), "finished_at": T0 + timedelta(minutes=n, seconds=3),
        "user": "ann", "task": "txt2img", "model": "embedded", "model_revision": "main", "params": params,
        "prompt": prompt, "negative_prompt": "blurry", "seed": 2**32 - n, "sampler": "Euler a",
        "num_inference_steps": 20, "guidance_scale": 7.0, "width": 64, "height": 64, "batch_size": 1,
        "status": "succeeded", "error": None, "duration_ms": 3000, "timings": {"run_s": 3.0},
        "environment": {"device": "cpu"}, "parent_id": parent_id,
    }  # fmt: skip


def image(n: int, generation_id: int, sha256: str) -> dict[str, Any]:
    return {
        "id": n, "generation_id": generation_id, "role": "output", "position": 0, "seed": n, "sha256": sha256,
        "path": f"images/{sha256[:2]}/{sha256}.png", "width": 64, "height": 64,
        "thumb_path": f"thumbs/{sha256[:2]}/{sha256}.webp", "created_at": T0,
    }  # fmt: skip


def fill_0001(engine: Engine) -> tuple[Table, Table]:
    """Rows written the way revision 0001's code wrote them; returns 0001's tables."""
    upgrade(engine, revision="0001")
    old = MetaData()
    old.reflect(engine, only=["generations", "images"])
    generations, images = old.tables["generations"], old.tables["images"]
    with engine.begin() as connection:
        connection.execute(
            insert(generations),
            [
                generation(1, prompt="a red castle at dusk"),
                generation(2, prompt="a fox in the snow", parent_id=1),
                generation(3, prompt="castle ruins, fog"),
            ],
        )
        connection.execute(insert(images), [image(1, 1, "ab" * 32), image(2, 2, "cd" * 32), image(3, 3, "ab" * 32)])
    return generations, images


def snapshot(engine: Engine, *tables: Table) -> list[list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return [connection.execute(select(table).order_by(table.c.id)).all() for table in tables]


def test_upgrade_to_0002_keeps_every_row_and_indexes_old_prompts(engine: Engine, db_url: str, tmp_path: Path) -> None:
    tables = fill_0001(engine)
    before = snapshot(engine, *tables)
    assert [len(rows) for rows in before] == [3, 3]

    upgrade(engine)

    assert snapshot(engine, *tables) == before  # every 0001 column of every row, unchanged
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0007"
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        old = gallery.get(2)
        assert (old.starred, old.review, old.review_note, old.tags, old.boards) == (False, "none", None, (), ())
        assert old.parent_id == 1 and old.params == {"task": "txt2img", "prompt": "a fox in the snow", "seed": 2}
        assert [r.id for r in gallery.search(text="castle").records] == [3, 1]
        assert [c.id for c in gallery.children(1)] == [2]
        assert gallery.star(3, starred=True).starred
        assert gallery.add_tags(1, ["old"]).tags == ("old",)


def test_downgrade_to_0001_keeps_every_row_and_upgrades_again(engine: Engine, db_url: str, tmp_path: Path) -> None:
    tables = fill_0001(engine)
    before = snapshot(engine, *tables)
    upgrade(engine)
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        gallery.review(1, state="approved", note=None, by="bob")
        gallery.create_board("Poster", by="ann")
        gallery.add_to_board("Poster", [1, 2])

    downgrade(engine, revision="0001")

    assert snapshot(engine, *tables) == before  # images included: nothing cascaded away
    with engine.connect() as connection:
        assert {"tags", "boards", "board_items"}.isdisjoint(inspect(connection).get_table_names())
        assert "starred" not in {c["name"] for c in inspect(connection).get_columns("generations")}
    upgrade(engine)
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        assert [r.id for r in gallery.search(text="snow").records] == [2]
        assert gallery.get(1).review == "none"


def test_0005_keeps_reference_images_and_downgrades_without_them(
    engine: Engine, db_url: str, tmp_path: Path, new_generation
) -> None:
    from PIL import Image as PILImage

    from storage import ImageInput

    upgrade(engine)
    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        record = gallery.start(new_generation())
        reference = PILImage.new("RGB", (8, 8), (200, 10, 10))
        output = PILImage.new("RGB", (8, 8), (10, 10, 200))
        done = gallery.finish(
            record.id,
            images=[ImageInput(role="reference", image=reference), ImageInput(role="output", image=output, seed=1)],
            environment={},
            timings={},
            duration_ms=1,
        )
        assert sorted(i.role for i in done.images) == ["output", "reference"]

    downgrade(engine, revision="0004")
    with engine.connect() as connection:
        roles = [row[0] for row in connection.execute(text("SELECT role FROM images"))]
        assert roles == ["output"]
    upgrade(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0007"


def test_0007_leaves_older_generations_unscored_and_downgrades_without_the_columns(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    tables = fill_0001(engine)
    upgrade(engine, revision="0006")
    before = snapshot(engine, *tables)

    upgrade(engine)

    with Gallery(url=db_url, data_dir=tmp_path) as gallery:
        assert [(r.adherence, r.adherence_detail) for r in gallery.search().records] == [(None, None)] * 3
        assert gallery.search(order="adherence").records[0].id == 3  # the unscored, newest first
        assert gallery.count(min_adherence=0) == 0
    downgrade(engine, revision="0006")
    with engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("generations")}
    assert {"adherence", "adherence_detail"}.isdisjoint(columns)
    assert snapshot(engine, *tables) == before
