"""Content-addressed blob storage: `<data_dir>/blobs/sha256/<hex>`, staged under `<data_dir>/blobs/tmp`.

Invariants:
- A blob's path is the sha256 of its bytes; a stored blob is never rewritten (same content, same path).
- A blob appears under `sha256/` only complete and durable: it is written to a staging file, fsynced,
  renamed into place, and the directory fsynced (`protocols.durable.replace_durably`).
- Staging files live on the same filesystem as the blobs (the rename is atomic) and are removed when
  an upload is refused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from protocols.durable import replace_durably

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StagedFile:
    path: Path
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._staging = root / "tmp"
        self._objects = root / "sha256"

    def path(self, sha256: str) -> Path:
        return self._objects / sha256

    def stage(self, source: IO[bytes], *, suffix: str) -> StagedFile:
        """Copy `source` to a staging file (fsynced), hashing on the way; memory use is one chunk."""
        self._staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=self._staging)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as target:
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    target.write(chunk)
                    size += len(chunk)
                target.flush()
                os.fsync(target.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedFile(path=Path(name), sha256=digest.hexdigest(), size=size)

    def commit(self, staged: StagedFile) -> Path:
        """Move `staged` to its content address (dropping it if that blob is already stored)."""
        target = self.path(staged.sha256)
        if target.exists():
            staged.path.unlink(missing_ok=True)
            return target
        self._objects.mkdir(parents=True, exist_ok=True)
        replace_durably(staged.path, target)
        return target

    @staticmethod
    def discard(staged: StagedFile) -> None:
        staged.path.unlink(missing_ok=True)
