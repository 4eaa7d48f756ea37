"""Gallery.delete: who may, what goes with a record, and that files and rows stay in step through a crash."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text

from storage import Gallery, GenerationRecord, ImageInput, NewGeneration, NotAllowed, RecordNotFound, StorageError
from storage.db import make_engine

NewFactory = Callable[..., NewGeneration]
REPO = Path(__file__).resolve().parents[2]


def finished(gallery: Gallery, new: NewGeneration, images: list[ImageInput]) -> GenerationRecord:
    started = gallery.start(new)
    return gallery.finish(started.id, images=images, environment={}, timings={}, duration_ms=1)


def on_disk(data_dir: Path) -> set[str]:
    """Every file under images/, thumbs/ and pending/, relative to the data folder."""
    found = (p for folder in ("images", "thumbs", "pending") for p in (data_dir / folder).rglob("*"))
    return {p.relative_to(data_dir).as_posix() for p in found if p.is_file()}


def files_of(*records: GenerationRecord) -> set[str]:
    return {path for record in records for image in record.images for path in (image.path, image.thumb_path)}


def test_the_owner_deletes_rows_and_unshared_files(
    tmp_path: Path, any_gallery: Gallery, new_generation: NewFactory
) -> None:
    g = any_gallery
    shared = Image.new("RGB", (16, 16), "white")
    keeper = finished(g, new_generation(prompt="a white wall"), [ImageInput("input", shared)])
    doomed = finished(
        g,
        new_generation(prompt="a red castle"),
        [ImageInput("output", Image.new("RGB", (16, 16), "red"), seed=42), ImageInput("input", shared)],
    )
    g.add_tags(doomed.id, ["keeper"])
    g.create_board("Poster", by="ann")
    g.add_to_board("Poster", [doomed.id, keeper.id])
    child = g.start(new_generation(parent_id=doomed.id))
    doomed = g.get(doomed.id)

    deleted = g.delete(doomed.id, by="ann", is_admin=False)

    assert deleted == doomed
    with pytest.raises(RecordNotFound):
        g.get(doomed.id)
    assert g.get(child.id).parent_id is None
    assert g.search(text="castle").records == () and g.count(text="castle") == 0
    assert g.search(tag="keeper").records == ()
    assert [(b.name, b.size) for b in g.boards()] == [("Poster", 1)]
    # The shared input survives with its other record; the output is gone; no markers are left.
    assert on_disk(tmp_path) == files_of(keeper)
    assert g.path(keeper.images[0].path).exists()


def test_others_may_not_delete_but_an_admin_may(
    tmp_path: Path, any_gallery: Gallery, new_generation: NewFactory
) -> None:
    record = finished(any_gallery, new_generation(user="ann"), [ImageInput("input", Image.new("RGB", (8, 8)))])

    with pytest.raises(NotAllowed, match=r"^Only ann or an admin may delete generation 1\.$"):
        any_gallery.delete(record.id, by="bob", is_admin=False)
    assert any_gallery.get(record.id) == record
    assert on_disk(tmp_path) == files_of(record)

    any_gallery.delete(record.id, by="bob", is_admin=True)
    assert any_gallery.count() == 0
    assert on_disk(tmp_path) == set()


def test_delete_refuses_what_it_cannot_do(any_gallery: Gallery, new_generation: NewFactory) -> None:
    running = any_gallery.start(new_generation())

    with pytest.raises(StorageError, match=r"^Generation 1 is still running; cancel it before deleting it\.$"):
        any_gallery.delete(running.id, by="ann", is_admin=False)
    with pytest.raises(RecordNotFound, match=r"^Generation 9 does not exist\.$"):
        any_gallery.delete(9, by="ann", is_admin=True)
    with pytest.raises(StorageError, match=r"^by must not be empty\.$"):
        any_gallery.delete(running.id, by="", is_admin=True)
    with pytest.raises(StorageError, match=r"^is_admin must be True or False, not 'yes'\.$"):
        any_gallery.delete(running.id, by="ann", is_admin="yes")  # type: ignore[arg-type]
    assert any_gallery.get(running.id) == running


# A child process finishes two generations that share an input image, then
# deletes the second and dies (os._exit, no cleanup) at one step: after the
# removal markers are written but before the commit ("mark"), or after the
# commit but before any file is unlinked ("finish_removal").
CHILD = """
import os, sys
from pathlib import Path
from PIL import Image
from storage import Gallery, ImageInput, NewGeneration
from storage.files import FileStore

data_dir, step = Path(sys.argv[1]), sys.argv[2]
params = dict(task="txt2img", model="embedded", prompt="a red circle", negative_prompt="",
              num_inference_steps=2, sampler="Euler a", guidance_scale=7.0, seed=1,
              width=64, height=64, batch_size=1)
new = NewGeneration(user="ann", params=params, **params)
gallery = Gallery(url=f"sqlite:///{data_dir}/gallery.db", data_dir=data_dir)
shared = Image.new("RGB", (64, 64), "white")
for images in ([ImageInput("input", shared)],
               [ImageInput("output", Image.new("RGB", (64, 64), "red"), seed=1), ImageInput("input", shared)]):
    gallery.finish(gallery.start(new).id, images=images, environment={}, timings={}, duration_ms=1)

if step == "mark":
    original = FileStore.mark_for_removal
    def crashing(self, shas):
        original(self, shas)
        os._exit(1)
    FileStore.mark_for_removal = crashing
else:
    FileStore.finish_removal = lambda self, shas, referenced: os._exit(1)
gallery.delete(2, by="ann", is_admin=False)
sys.exit(0)  # reaching here means the crash never happened
"""


def crash(data_dir: Path, *, step: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", CHILD, str(data_dir), step]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr


def rows_and_files_match(data_dir: Path) -> set[str]:
    """No file without a row, no row without its file, nothing left in pending/; returns the files."""
    engine = make_engine(f"sqlite:///{data_dir}/gallery.db")
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT sha256, path, thumb_path FROM images")).all()
    finally:
        engine.dispose()
    for sha256, path, _ in rows:
        assert hashlib.sha256((data_dir / path).read_bytes()).hexdigest() == sha256
    assert on_disk(data_dir) == {path for _, path, _ in rows} | {thumb for _, _, thumb in rows}
    return on_disk(data_dir)


def test_crash_before_the_commit_keeps_the_record_and_its_files(tmp_path: Path) -> None:
    crash(tmp_path, step="mark")
    assert {p.suffix for p in (tmp_path / "pending").iterdir()} == {".unlink"}  # the crash left markers

    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as gallery:
        assert [len(gallery.get(n).images) for n in (1, 2)] == [1, 2]

    assert len(rows_and_files_match(tmp_path)) == 2 * 2  # two images, each with its thumbnail


def test_crash_after_the_commit_removes_the_files_on_the_next_open(tmp_path: Path) -> None:
    crash(tmp_path, step="finish_removal")
    assert len(on_disk(tmp_path)) == 2 * 2 + 2  # both images and thumbnails, and two markers

    with Gallery(url=f"sqlite:///{tmp_path}/gallery.db", data_dir=tmp_path) as gallery:
        with pytest.raises(RecordNotFound):
            gallery.get(2)
        survivor = gallery.get(1)

    assert rows_and_files_match(tmp_path) == files_of(survivor)
