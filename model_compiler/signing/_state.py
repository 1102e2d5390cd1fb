"""The signer's TUF repository state on disk: metadata files, role expiries, and publication.

Layout of `<repo>/metadata/`: `N.root.json` for every root version plus `root.json` (a copy of the
newest), `N.targets.json` and `N.snapshot.json` (consistent snapshots: clients fetch them by
version), and `timestamp.json`.

Invariants:
- The newest `N.root.json` is the current root; `root.json` is rewritten after it.
- `timestamp.json` is written last and is the commit point of a publication: the current state is
  the snapshot it names and the targets that snapshot names. A crash before it leaves the previous
  state current and published; the next publication reuses (overwrites) the same version numbers.
- Every file is written with `write_atomic` (fsync, rename, fsync directory).
- A publication bumps the timestamp version, and the snapshot and targets versions when they are
  re-signed; nothing is signed or written unless every role's threshold of keys is at hand.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from model_compiler.errors import RepositoryNotFoundError
from model_compiler.signing.keys import KEYS_DIRNAME, role_signers
from model_compiler.signing.release import METADATA_DIRNAME
from protocols.durable import write_atomic
from protocols.identifiers import Positive

EXPIRIES_FILENAME = "expiries.json"
ONLINE_ROLES = ("snapshot", "timestamp")
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


def serialize(
    metadata: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
) -> bytes:
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
    snapshot = Metadata[Snapshot].from_bytes(
        (metadata_dir / f"{snapshot_version}.snapshot.json").read_bytes()
    )
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


class RoleExpiries(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long each role's metadata stays valid after it is signed (`<repo>/expiries.json`)."""

    root_days: Positive = 365
    targets_days: Positive = 90
    snapshot_days: Positive = 7
    timestamp_days: Positive = 1


_expiries_decoder = msgspec.json.Decoder(RoleExpiries)


def reference_time(now: datetime | None) -> datetime:
    """The time expiries count from: `now` in UTC, or the current time."""
    return datetime.now(UTC) if now is None else now.astimezone(UTC)


@dataclass
class RepositoryState:
    """An opened repository: its directory, expiry policy and current metadata."""

    repo_dir: Path
    expiries: RoleExpiries
    metadata: RepositoryMetadata

    @classmethod
    def open(cls, repo_dir: Path) -> RepositoryState:
        expiries_path = repo_dir / EXPIRIES_FILENAME
        if not expiries_path.is_file():
            raise RepositoryNotFoundError(repo_dir)
        metadata = read_current(repo_dir / METADATA_DIRNAME)
        return cls(repo_dir, _expiries_decoder.decode(expiries_path.read_bytes()), metadata)

    def signers(self, role: str) -> list[Signer]:
        return role_signers(self.repo_dir / KEYS_DIRNAME, self.metadata.root.signed, role)

    def publish(self, now: datetime, *, resign_targets: bool, resign_snapshot: bool = True) -> None:
        """Bump and re-sign the timestamp, and the targets and snapshot as asked; write; commit."""
        metadata = self.metadata
        resign_snapshot = resign_snapshot or resign_targets
        metadata.targets.signed.version += resign_targets
        metadata.snapshot.signed.version += resign_snapshot
        metadata.timestamp.signed.version += 1
        self.sign_and_write(now, resign_targets=resign_targets, resign_snapshot=resign_snapshot)

    def sign_and_write(self, now: datetime, *, resign_targets: bool, resign_snapshot: bool) -> None:
        """Sign the current versions with expiries counted from `now`, then write them."""
        metadata, expiries = self.metadata, self.expiries
        signers = {role: self.signers(role) for role in ("targets", *ONLINE_ROLES)}
        targets = snapshot = None
        if resign_targets:
            data = _sign(metadata.targets, signers["targets"], now + timedelta(days=expiries.targets_days))
            targets = (metadata.targets.signed.version, data)
            metadata.snapshot.signed.meta[TARGETS_META_KEY] = meta_file(targets[0], data)
        if resign_snapshot:
            data = _sign(metadata.snapshot, signers["snapshot"], now + timedelta(days=expiries.snapshot_days))
            snapshot = (metadata.snapshot.signed.version, data)
            metadata.timestamp.signed.snapshot_meta = meta_file(snapshot[0], data)
        expires = now + timedelta(days=expiries.timestamp_days)
        timestamp = _sign(metadata.timestamp, signers["timestamp"], expires)
        write_publication(
            self.repo_dir / METADATA_DIRNAME, targets=targets, snapshot=snapshot, timestamp=timestamp
        )


def _sign(
    metadata: Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
    signers: list[Signer],
    expires: datetime,
) -> bytes:
    metadata.signed.expires = expires
    metadata.signatures.clear()
    for signer in signers:
        metadata.sign(signer, append=True)
    return serialize(metadata)
