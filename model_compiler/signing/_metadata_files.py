"""The metadata files of the TUF repository on disk, read and written as one consistent state.

Layout of `<repo>/metadata/`: `N.root.json` for every root version plus `root.json` (a copy of the
newest), `N.targets.json` and `N.snapshot.json` (consistent snapshots: clients fetch them by
version), and `timestamp.json`.

Invariants:
- The newest `N.root.json` is the current root; `root.json` is rewritten after it.
- `timestamp.json` is written last and is the commit point of a publication: the current state is
  the snapshot it names and the targets that snapshot names. A crash before it leaves the previous
  state current and published; the next publication reuses (overwrites) the same version numbers.
- Every file is written with `write_atomic` (fsync, rename, fsync directory).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from protocols.durable import write_atomic

METADATA_DIRNAME = "metadata"
ROOT_FILENAME = "root.json"
TIMESTAMP_FILENAME = "timestamp.json"
TARGETS_META_KEY = "targets.json"
_VERSIONED_ROOT = re.compile(r"^([1-9][0-9]*)\.root\.json\Z")
_SERIALIZER = JSONSerializer(compact=False)


@dataclass
class RepositoryMetadata:
    """The current signed state of the four top-level roles."""

    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]


def serialize(metadata: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp]) -> bytes:
    return metadata.to_bytes(_SERIALIZER)


def meta_file(version: int, data: bytes) -> MetaFile:
    """What a parent role records about a metadata file: version, exact length and sha256."""
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


def root_versions(metadata_dir: Path) -> list[int]:
    """Every root version on disk, oldest first."""
    matches = (_VERSIONED_ROOT.match(path.name) for path in metadata_dir.iterdir())
    return sorted(int(match.group(1)) for match in matches if match)


def read_current(metadata_dir: Path) -> RepositoryMetadata:
    """The newest root and the state committed by `timestamp.json`."""
    root_path = metadata_dir / f"{root_versions(metadata_dir)[-1]}.root.json"
    timestamp = Metadata[Timestamp].from_bytes((metadata_dir / TIMESTAMP_FILENAME).read_bytes())
    snapshot_version = timestamp.signed.snapshot_meta.version
    snapshot = Metadata[Snapshot].from_bytes((metadata_dir / f"{snapshot_version}.snapshot.json").read_bytes())
    targets_version = snapshot.signed.meta[TARGETS_META_KEY].version
    targets = Metadata[Targets].from_bytes((metadata_dir / f"{targets_version}.targets.json").read_bytes())
    return RepositoryMetadata(
        root=Metadata[Root].from_bytes(root_path.read_bytes()),
        targets=targets,
        snapshot=snapshot,
        timestamp=timestamp,
    )


def write_root(metadata_dir: Path, root: Metadata[Root]) -> None:
    data = serialize(root)
    write_atomic(metadata_dir / f"{root.signed.version}.root.json", data)
    write_atomic(metadata_dir / ROOT_FILENAME, data)


def write_publication(
    metadata_dir: Path,
    *,
    targets: tuple[int, bytes] | None,
    snapshot: tuple[int, bytes] | None,
    timestamp: bytes,
) -> None:
    """Write re-signed `(version, bytes)` targets and snapshot, then commit with the timestamp."""
    if targets is not None:
        write_atomic(metadata_dir / f"{targets[0]}.targets.json", targets[1])
    if snapshot is not None:
        write_atomic(metadata_dir / f"{snapshot[0]}.snapshot.json", snapshot[1])
    write_atomic(metadata_dir / TIMESTAMP_FILENAME, timestamp)
