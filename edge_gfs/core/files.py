"""Atomic file writes: the one way edge-gfs replaces a file (registry, class packs, checkpoints, artifacts, logs
of a run), so a crash or power cut leaves the old file or the new one, never a torn one.

No torch here: the node, the wire tools and the trainer all use it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_MARK = ".tmp"  # temp files are ".NAME.<random>.tmp" beside their target: stale ones are easy to find


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(dest: Path) -> Path:
    """A new empty temp file in dest's folder (same filesystem, so os.replace is atomic); for writers that want a
    path, such as exporters and savefig."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TEMP_MARK + dest.suffix)
    os.close(fd)
    return Path(tmp)


def install(built: Path, dest: Path, mode: int = 0o644) -> None:
    """fsync a finished temp file, give it `mode` (mkstemp makes 0600) and rename it over dest."""
    with open(built, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(built, mode)
    os.replace(built, dest)
    fsync_dir(Path(dest).parent)


@contextmanager
def atomic_open(dest: Path) -> Iterator[BinaryIO]:
    """Write dest through a temp file: `with atomic_open(p) as f: f.write(...)`; on error dest is untouched."""
    tmp = temp_beside(dest)
    try:
        with open(tmp, "wb") as f:
            yield f
        install(tmp, Path(dest))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(dest: Path, data: bytes) -> None:
    with atomic_open(dest) as f:
        f.write(data)


def atomic_write_text(dest: Path, text: str) -> None:
    atomic_write(dest, text.encode())


def stale_temps(folder: Path, name: str) -> list[Path]:
    """Temp files that a killed writer of folder/name left behind (safe to delete when no writer runs)."""
    return sorted(Path(folder).glob(f".{name}.*{TEMP_MARK}*"))
