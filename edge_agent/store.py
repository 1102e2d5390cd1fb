"""The agent's on-disk model store: content-addressed artifacts and atomic current/previous links.

Layout under the state dir:
- `objects/sha256/<hex>/` — an extracted, verified artifact (hex = sha256 of its signed archive),
  with `objects/sha256/<hex>.target.json` recording what was signed (model, version, counter).
- `models/<name>/current`, `models/<name>/previous` — symlinks to object directories.
- `downloads/` — partial and complete archives being fetched (resumable).

Invariants:
- An object directory appears only complete (it is renamed into place after verification).
- `current` is switched with one `rename(2)` of a symlink, after `previous` already points at the
  old one, so a crash at any point leaves a link to one complete artifact: never a mix.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edge_agent.errors import NothingToRollBackError
from model_compiler.signing.release import SignedTarget
from protocols.durable import fsync_directory, write_atomic
from protocols.manifest import MANIFEST_FILENAME, ArtifactManifest, manifest_decoder


@dataclass(frozen=True, slots=True)
class InstalledModel:
    name: str
    directory: Path
    manifest: ArtifactManifest
    signed: SignedTarget


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / "sha256"
        self.models = root / "models"
        self.downloads = root / "downloads"
        for directory in (self.objects, self.models, self.downloads):
            directory.mkdir(parents=True, exist_ok=True)

    def object_dir(self, sha256: str) -> Path:
        return self.objects / sha256

    def has_object(self, sha256: str) -> bool:
        return (self.object_dir(sha256) / MANIFEST_FILENAME).is_file()

    def record_signed_target(self, target: SignedTarget) -> None:
        write_atomic(self.objects / f"{target.sha256}.target.json", msgspec.json.encode(target))

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def _load(self, name: str, link: Path) -> InstalledModel | None:
        if not link.is_symlink():
            return None
        directory = link.resolve()
        try:
            manifest = manifest_decoder.decode((directory / MANIFEST_FILENAME).read_bytes())
            signed = msgspec.json.decode(
                (directory.parent / f"{directory.name}.target.json").read_bytes(), type=SignedTarget
            )
        except (OSError, msgspec.DecodeError):
            return None
        return InstalledModel(name=name, directory=directory, manifest=manifest, signed=signed)

    def current(self, name: str) -> InstalledModel | None:
        return self._load(name, self.models / name / "current")

    def previous(self, name: str) -> InstalledModel | None:
        return self._load(name, self.models / name / "previous")

    def model_names(self) -> list[str]:
        return sorted(p.name for p in self.models.iterdir() if (p / "current").is_symlink())

    def _link(self, name: str, which: str, sha256: str) -> None:
        directory = self.models / name
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".{which}.tmp"
        temporary.unlink(missing_ok=True)
        os.symlink(os.path.relpath(self.object_dir(sha256), directory), temporary)
        os.replace(temporary, directory / which)
        fsync_directory(directory)

    def activate(self, name: str, sha256: str) -> None:
        """Make `sha256` current; the old current becomes previous (see module invariants)."""
        old = self.current(name)
        if old is not None and old.directory.name != sha256:
            self._link(name, "previous", old.directory.name)
        self._link(name, "current", sha256)

    def roll_back(self, name: str) -> InstalledModel:
        """Swap current and previous; return the model now current."""
        old, previous = self.current(name), self.previous(name)
        if previous is None or old is None:
            raise NothingToRollBackError(name)
        self._link(name, "previous", old.directory.name)
        self._link(name, "current", previous.directory.name)
        installed = self.current(name)
        assert installed is not None
        return installed

    def prune(self) -> list[str]:
        """Remove objects no model links to; return their digests."""
        keep = {
            link.resolve().name
            for model in self.models.iterdir()
            for link in (model / "current", model / "previous")
            if link.is_symlink()
        }
        removed = []
        for entry in self.objects.iterdir():
            digest = entry.name.removesuffix(".target.json")
            if digest not in keep and not digest.startswith("."):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(digest)
        return sorted(set(removed))
