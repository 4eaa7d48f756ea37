from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import Gallery, NewGeneration

# The PostgreSQL server (`postgres_url`, `pg_url`) is tests/conftest.py's: the Ray pool's tests use it too.


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend the gallery supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gallery.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def any_gallery(db_url: str, tmp_path: Path) -> Iterator[Gallery]:
    """A gallery on SQLite, then (a second run of the test) on PostgreSQL."""
    with Gallery(url=db_url, data_dir=tmp_path) as opened:
        yield opened


def _params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "task": "txt2img",
        "model": "embedded",
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "num_inference_steps": 20,
        "sampler": "Euler a",
        "guidance_scale": 7.0,
        "seed": 42,
        "width": 64,
        "height": 64,
        "batch_size": 2,
    }
    params.update(overrides)
    return params


@pytest.fixture
def new_generation() -> Callable[..., NewGeneration]:
    """A NewGeneration whose indexed columns agree with its params, as the studio builds them."""

    def build(*, user: str = "ann", parent_id: int | None = None, **overrides: Any) -> NewGeneration:
        params = _params(**overrides)
        return NewGeneration(
            user=user,
            task=params["task"],
            model=params["model"],
            params=params,
            prompt=params["prompt"],
            negative_prompt=params["negative_prompt"],
            seed=params["seed"],
            sampler=params["sampler"],
            num_inference_steps=params["num_inference_steps"],
            guidance_scale=params["guidance_scale"],
            width=params["width"],
            height=params["height"],
            batch_size=params["batch_size"],
            model_revision="main",
            parent_id=parent_id,
        )

    return build


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as opened:
        yield opened
