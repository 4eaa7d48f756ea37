"""Content-addressed image files under the data folder, and the protocol that lands them with their rows.

Layout: `images/<sha[:2]>/<sha>.png`, thumbnails `thumbs/<sha[:2]>/<sha>.webp`,
and `pending/` for files whose rows are not committed yet.

A file and its row land together (STYLE.md rule 5): `stage` writes the bytes
to a name in `pending/` that is derived from the content, the caller commits
the rows, then `land` renames into place. A crash before the commit leaves a
pending file no row names; a crash after it leaves one a row names.
`recover` tells them apart by sha256, finishing the second kind and deleting
the first, so the folder never holds a file without a row or a row without a
file. Because names come from content, identical images share one file and a
second write of a known sha256 writes nothing.

Deleting works the other way round, with the same guarantee. `mark_for_removal`
leaves a marker `pending/<sha>.unlink` for each file the deleted rows named,
the caller commits the deletion, then `finish_removal` deletes the files no
row names any more (content addressing means another record may share them)
and the markers. A crash before the commit leaves markers whose files rows
still name; a crash after it leaves markers whose files nothing names. Either
way `recover` finishes the job from the markers alone, so no scan of the
whole image folder is ever needed.

Several processes may share a data folder (the server and a CLI `gallery
list`, say). Writers hold a shared lock on `landing.lock` from staging to
landing, and `recover` runs only under the exclusive lock, so it can never
take a live writer's pending file for a dead one's. Deleters hold the
exclusive lock (waiting for it) from the markers to the last unlink, so no
writer can find a file in place, commit a row for it, and then lose it to a
deleter that had checked before that commit. Where `fcntl` is missing
(Windows) there is no lock, and one process at a time should use a folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

THUMB_MAX_SIDE = 256
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")  # what Pillow can write as PNG
_PENDING_NAME = re.compile(r"^(?P<sha>[0-9a-f]{64})\.(?:(?P<ext>png|webp)\.pending|(?P<unlink>unlink))$")


def image_path(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.png"


def thumb_path(sha256: str) -> str:
    return f"thumbs/{sha256[:2]}/{sha256}.webp"


def encode_png(image: Image.Image, *, text: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes; the same pixels and text give the same bytes (Pillow adds no timestamp)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)  # Pillow switches to iTXt for text beyond Latin-1
    buffer = io.BytesIO()
    # Fixed settings: the sha256 of these bytes is the file's identity.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=6, optimize=False)
    return buffer.getvalue()


def encode_thumbnail(image: Image.Image) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE), Image.Resampling.LANCZOS)
    has_alpha = "A" in thumb.getbands() or "transparency" in thumb.info
    # WebP holds only RGB(A); masks ("L") and palette images are converted.
    thumb = thumb.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


@dataclass(frozen=True)
class StagedImage:
    """An encoded image waiting in pending/ for its row to commit."""

    sha256: str
    path: str
    thumb_path: str
    width: int
    height: int
    moves: tuple[tuple[Path, Path], ...]  # (pending, final); empty when both files already existed


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending = root / "pending"
        for folder in (root / "images", root / "thumbs", self.pending):
            folder.mkdir(parents=True, exist_ok=True)

    def stage(self, image: Image.Image, *, text: Mapping[str, str] | None = None) -> StagedImage:
        """Encode `image` and write whatever of it is new to pending/, durably."""
        data = encode_png(image, text=text)
        sha256 = hashlib.sha256(data).hexdigest()
        moves: list[tuple[Path, Path]] = []
        try:
            final = self.root / image_path(sha256)
            if not final.exists():
                moves.append((self._write_pending(f"{sha256}.png.pending", data), final))
            final_thumb = self.root / thumb_path(sha256)
            if not final_thumb.exists():
                moves.append((self._write_pending(f"{sha256}.webp.pending", encode_thumbnail(image)), final_thumb))
            if moves:
                # The commit that follows must not outlive the pending names on a power cut.
                _fsync_dir(self.pending)
        except BaseException:
            # A full disk, say: the caller never gets this image to discard, so its files go here.
            for pending, _ in moves:
                pending.unlink(missing_ok=True)
            raise
        return StagedImage(
            sha256=sha256,
            path=image_path(sha256),
            thumb_path=thumb_path(sha256),
            width=image.width,
            height=image.height,
            moves=tuple(moves),
        )

    def land(self, staged: StagedImage) -> None:
        """Rename staged files into place; call only after their rows are committed."""
        for pending, final in staged.moves:
            _move_into_place(pending, final)

    def discard(self, staged: StagedImage) -> None:
        """Delete staged files whose rows will never be committed."""
        for pending, _ in staged.moves:
            pending.unlink(missing_ok=True)

    @contextmanager
    def landing(self) -> Iterator[None]:
        """Hold while staging, committing and landing, so recovery elsewhere waits or skips."""
        with self._lock(fcntl.LOCK_SH if fcntl else 0):
            yield

    @contextmanager
    def removing(self) -> Iterator[None]:
        """Hold while marking, committing a deletion and removing its files; waits for writers to land."""
        with self._lock(fcntl.LOCK_EX if fcntl else 0):
            yield

    def mark_for_removal(self, shas: Collection[str]) -> None:
        """Durably note that rows naming these files are about to be deleted; call before the commit."""
        for sha256 in shas:
            (self.pending / f"{sha256}.unlink").touch()
        if shas:
            _fsync_dir(self.pending)

    def finish_removal(self, shas: Collection[str], *, referenced: Collection[str]) -> int:
        """Delete the files of `shas` that no row names (`referenced` are those some row does); return how many.

        Call after the deletion is committed (or has failed: the files rows
        still name are kept either way), under `removing`.
        """
        removed = 0
        for sha256 in shas:
            if sha256 not in referenced:
                removed += self._remove(sha256)
            (self.pending / f"{sha256}.unlink").unlink(missing_ok=True)
        return removed

    def recover(self, *, committed: Callable[[set[str]], Collection[str]]) -> tuple[int, int] | None:
        """Land pending files whose sha256 `committed` confirms, delete the rest; return (landed, deleted).

        Removal markers count as deleted; the files of a marker whose sha256
        `committed` does not confirm are removed with it.
        Returns None, touching nothing, while another process is landing files.
        """
        try:
            with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB if fcntl else 0):
                # Listed and checked under the lock: a writer that commits after
                # the check cannot have a pending file we are about to judge.
                pending = sorted(p for p in self.pending.iterdir() if p.is_file())
                names = {p: _PENDING_NAME.match(p.name) for p in pending}
                shas = {m["sha"] for m in names.values() if m}
                keep = set(committed(shas)) if shas else set()
                landed = deleted = 0
                for path, match in names.items():
                    if match and match["unlink"]:
                        if match["sha"] not in keep:
                            self._remove(match["sha"])
                        path.unlink(missing_ok=True)
                        deleted += 1
                    elif match and match["sha"] in keep:
                        sha256 = match["sha"]
                        relative = image_path(sha256) if match["ext"] == "png" else thumb_path(sha256)
                        _move_into_place(path, self.root / relative)
                        landed += 1
                    else:
                        path.unlink(missing_ok=True)
                        deleted += 1
                return landed, deleted
        except BlockingIOError:
            return None

    def absolute(self, relative: str) -> Path:
        """The absolute path of `relative` inside the data folder; anything that escapes it is refused."""
        root = self.root.resolve()
        if not relative or Path(relative).is_absolute() or relative.startswith(("/", "\\")):
            raise ValueError(f"{relative!r} is not a relative path inside the data folder.")
        resolved = (root / relative).resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise ValueError(f"{relative!r} points outside the data folder.")
        return resolved

    def _remove(self, sha256: str) -> int:
        removed = 0
        for relative in (image_path(sha256), thumb_path(sha256)):
            try:
                (self.root / relative).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    @contextmanager
    def _lock(self, operation: int) -> Iterator[None]:
        with open(self.root / "landing.lock", "a+b") as file:
            if fcntl:
                fcntl.flock(file.fileno(), operation)  # released on close, or when the process dies
            yield

    def _write_pending(self, name: str, data: bytes) -> Path:
        path = self.pending / name
        # Written under a private name first: another process staging the same
        # bytes must never truncate a pending file that may already have landed.
        private = self.pending / f"{name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(private, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(private, path)
        except BaseException:
            private.unlink(missing_ok=True)  # half a file on a full disk is not left behind
            raise
        return path


def _move_into_place(pending: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(pending, final)
    except FileNotFoundError:
        # Two images with the same bytes share one pending name: the first
        # rename already landed the content this one was carrying.
        if not final.exists():
            raise


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
