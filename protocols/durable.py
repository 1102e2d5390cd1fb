"""Crash-safe file writes, shared by every process that persists state.

Invariant: after `write_atomic` or `replace_durably` returns, the target holds either the old
or the complete new content -- never a torn mix -- and survives a power loss: data is fsynced
before the rename and the directory entry is fsynced after it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Persist a directory's entries (a rename or a new file in it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """fsync `source`, rename it over `target`, fsync the target's directory."""
    with source.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(source, target)
    fsync_directory(target.parent)


def write_atomic(target: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `target` through a temp file in the same directory: fsync, rename, fsync dir."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
