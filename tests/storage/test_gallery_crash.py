"""A process killed mid-landing leaves either the rows and their files, or neither (STYLE.md rule 5).

Each case runs the gallery in a child process that dies with os._exit at one
step of `finish`, with no cleanup and no exception handlers, much as a killed
worker would; then this process reopens the folder and checks what is there.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from storage import Gallery
from storage.db import make_engine
from storage.queue import LEASE_SECONDS

REPO = Path(__file__).resolve().parents[2]

# The child first finishes one generation normally (an input image that the
# crashing one reuses, so recovery must not touch shared files), then starts a
# second and dies at call `number` of FileStore.`step`: after `stage` returns
# (pending files written, nothing committed) or before `land` runs (rows
# committed, files not yet renamed).
CHILD = """
import os, sys
from pathlib import Path
from PIL import Image
from storage import Gallery, ImageInput, NewGeneration
from storage.files import FileStore

data_dir, step, number = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
params = dict(task="txt2img", model="embedded", prompt="a red circle", negative_prompt="",
              num_inference_steps=2, sampler="Euler a", guidance_scale=7.0, seed=1,
              width=64, height=64, batch_size=2)
new = NewGeneration(user="ann", params=params, **params)
def finish(gallery, generation_id, images):
    gallery.finish(generation_id, images=images, environment={}, timings={}, duration_ms=1)

gallery = Gallery(url=f"sqlite:///{data_dir}/gallery.db", data_dir=data_dir)
shared = Image.new("RGB", (64, 64), "white")
finish(gallery, gallery.start(new).id, [ImageInput("input", shared)])

original = getattr(FileStore, step)
calls = 0
def crashing(self, *args, **kwargs):
    global calls
    calls += 1
    if step == "land" and calls == number:
        os._exit(1)
    result = original(self, *args, **kwargs)
    if step == "stage" and calls == number:
        os._exit(1)
    return result
setattr(FileStore, step, crashing)

finish(gallery, gallery.start(new).id, [
    ImageInput("output", Image.new("RGB", (64, 64), "red"), seed=1),
    ImageInput("output", Image.new("RGB", (64, 64), "blue"), seed=2),
    ImageInput("input", shared),
])
sys.exit(0)  # reaching here means the crash never happened
"""


def crash(data_dir: Path, *, step: str, number: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), step, str(number)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr


def one_lease_later() -> datetime:
    """A clock for the next reader after the dead process's lease ran out."""
    return datetime.now(timezone.utc) + timedelta(seconds=LEASE_SECONDS + 1)


def assert_folder_matches_rows(data_dir: Path) -> None:
    """No file without a row, no row without its file, no pending leftovers, a sound database."""
    engine = make_engine(f"sqlite:///{data_dir}/gallery.db")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            rows = connection.execute(text("SELECT sha256, path, thumb_path FROM images")).all()
    finally:
        engine.dispose()
    for sha256, path, _ in rows:
        assert hashlib.sha256((data_dir / path).read_bytes()).hexdigest() == sha256
    on_disk = {p.relative_to(data_dir).as_posix() for p in data_dir.glob("*/*/*") if p.is_file()}
    assert on_disk == {path for _, path, _ in rows} | {thumb for _, _, thumb in rows}
    assert list((data_dir / "pending").iterdir()) == []


@pytest.mark.parametrize("number", [1, 3], ids=["after-first-stage", "after-last-stage"])
def test_crash_before_commit_leaves_neither_rows_nor_files(tmp_path: Path, number: int) -> None:
    crash(tmp_path, step="stage", number=number)
    assert any((tmp_path / "pending").iterdir())  # the crash did leave debris behind

    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as gallery:
        crashed = gallery.get(2)
        assert crashed.status == "running"  # its lease has not run out yet
        assert crashed.images == ()
        assert len(gallery.get(1).images) == 1
    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path, clock=one_lease_later) as gallery:
        crashed = gallery.get(2)
        assert crashed.status == "interrupted" and crashed.images == ()

    assert_folder_matches_rows(tmp_path)


@pytest.mark.parametrize("number", [1, 2], ids=["before-first-land", "before-second-land"])
def test_crash_after_commit_keeps_the_rows_and_finishes_the_files(tmp_path: Path, number: int) -> None:
    crash(tmp_path, step="land", number=number)
    assert any((tmp_path / "pending").iterdir())

    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as gallery:
        crashed = gallery.get(2)
        assert crashed.status == "succeeded"
        assert [(i.role, i.seed) for i in crashed.images] == [("output", 1), ("output", 2), ("input", None)]
        assert crashed.images[2].sha256 == gallery.get(1).images[0].sha256
    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path, clock=one_lease_later) as gallery:
        assert gallery.get(2).status == "succeeded"  # an ended job has no lease to run out

    assert_folder_matches_rows(tmp_path)
