from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from storage.files import FileStore


def test_stage_writes_only_to_pending_and_land_moves_into_place(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    staged = store.stage(Image.new("RGB", (600, 300), "red"))

    assert staged.path == f"images/{staged.sha256[:2]}/{staged.sha256}.png"
    assert staged.thumb_path == f"thumbs/{staged.sha256[:2]}/{staged.sha256}.webp"
    assert sorted(p.name for p in (tmp_path / "pending").iterdir()) == [
        f"{staged.sha256}.png.pending",
        f"{staged.sha256}.webp.pending",
    ]
    assert not (tmp_path / staged.path).exists()

    store.land(staged)

    assert list((tmp_path / "pending").iterdir()) == []
    assert hashlib.sha256((tmp_path / staged.path).read_bytes()).hexdigest() == staged.sha256
    with Image.open(tmp_path / staged.thumb_path) as thumb:
        assert thumb.format == "WEBP"
        assert thumb.size == (256, 128)


def test_known_content_is_not_written_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.land(store.stage(Image.new("L", (32, 32), 128)))

    again = store.stage(Image.new("L", (32, 32), 128))

    assert again.moves == ()
    assert list((tmp_path / "pending").iterdir()) == []


def test_identical_images_staged_together_land_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = store.stage(Image.new("RGB", (16, 16), "blue"))
    second = store.stage(Image.new("RGB", (16, 16), "blue"))

    store.land(first)
    store.land(second)

    assert (tmp_path / first.path).exists()
    assert list((tmp_path / "pending").iterdir()) == []


def test_recover_lands_committed_files_and_deletes_the_rest(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    kept = store.stage(Image.new("RGB", (16, 16), "red"))
    dropped = store.stage(Image.new("RGB", (16, 16), "green"))
    (tmp_path / "pending" / "stray.tmp").write_bytes(b"x")

    asked: list[set[str]] = []

    def committed(shas: set[str]) -> set[str]:
        asked.append(shas)
        return {kept.sha256}

    assert store.recover(committed=committed) == (2, 3)
    assert asked == [{kept.sha256, dropped.sha256}]

    assert (tmp_path / kept.path).exists() and (tmp_path / kept.thumb_path).exists()
    assert not (tmp_path / dropped.path).exists() and not (tmp_path / dropped.thumb_path).exists()
    assert list((tmp_path / "pending").iterdir()) == []


def test_discard_removes_staged_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    store.discard(store.stage(Image.new("RGB", (16, 16), "red")))

    assert list((tmp_path / "pending").iterdir()) == []


@pytest.mark.parametrize("relative", ["../x", "images/../../x", "/etc/passwd", "", "."])
def test_absolute_refuses_paths_outside_the_data_folder(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="data folder"):
        FileStore(tmp_path).absolute(relative)


def test_absolute_resolves_paths_inside(tmp_path: Path) -> None:
    assert FileStore(tmp_path).absolute("images/ab/c.png") == tmp_path.resolve() / "images/ab/c.png"


@pytest.mark.skipif(sys.platform == "win32", reason="landing.lock uses fcntl")
def test_recover_leaves_files_alone_while_another_process_lands(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    staged = store.stage(Image.new("RGB", (16, 16), "red"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SHARED_LOCK, str(tmp_path / "landing.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert store.recover(committed=lambda shas: set()) is None
        assert all(pending.exists() for pending, _ in staged.moves)
    finally:
        holder.kill()
        holder.wait()

    assert store.recover(committed=lambda shas: set()) == (0, 2)


HOLD_SHARED_LOCK = """
import fcntl, sys, time
file = open(sys.argv[1], "a+b")
fcntl.flock(file.fileno(), fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(60)
"""
