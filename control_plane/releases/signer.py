"""The control plane's TUF repository in `<data_dir>/tuf/`: an adapter over `model_compiler.signing`.

Created with fresh keys for every role on first start and opened on every later one; signing,
timestamp refresh and file lookups go through `model_compiler.signing.repository`, so the layout is
the one `edgefabric keys|release` use (`metadata/`, `keys/`, `targets/`, `expiries.json`).

Invariants:
- The repository is created once: `init_repository` runs in a hidden sibling directory that is
  renamed into place when complete, so `<data_dir>/tuf` either does not exist or is a whole
  repository, and an existing one is never re-created (its keys are the fleet's trust).
- Every method here blocks (files, signatures); callers run the writing ones in a worker thread,
  one at a time (the service's lock).
- Signing errors leave as control-plane errors: a signed model version is a `ConflictError`, an
  unsignable compile output a `ConflictError` naming why, missing signing keys an
  `UnavailableError`.
- `refresh` re-signs the online roles a running control plane must keep valid once less than half
  of their lifetime is left: the timestamp (1 day by default) and the targets (90 days), so a
  fleet with no new release never meets expired metadata. The root is re-signed offline.
- Only the four metadata file names TUF clients fetch are served (`N.root.json`, `timestamp.json`,
  `N.snapshot.json`, `N.targets.json`); nothing else under the repository (keys!) is reachable.

The keys live beside the metadata on the control-plane host, root keys included. That keeps a
single-host install working; in production move the root keys offline (`edgefabric keys` with
`--root-threshold 2 --root-keys 3`, `keys rotate-root`) and bring them back only to rotate keys.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from tuf.api.serialization import DeserializationError

from control_plane.errors import ConflictError, DataDirError, UnavailableError
from model_compiler.errors import (
    ArtifactDirectoryError,
    ReleaseExistsError,
    RepositoryNotFoundError,
    SigningKeyMissingError,
)
from model_compiler.signing._state import RepositoryState
from model_compiler.signing.release import METADATA_DIRNAME, TARGETS_DIRNAME, SignedRelease
from model_compiler.signing.repository import init_repository, resign_timestamp, sign_release
from protocols.durable import fsync_directory
from protocols.errors import InvalidIdentifierError, ProtocolError
from protocols.manifest import MANIFEST_FILENAME, ArtifactManifest, manifest_decoder

logger = logging.getLogger(__name__)

_METADATA_FILE = re.compile(r"^(?:[1-9][0-9]{0,9}\.(?:root|snapshot|targets)\.json|timestamp\.json)\Z")


@dataclass(frozen=True, slots=True)
class RoleValidity:
    """When a role's current metadata expires, and how long a freshly signed one is valid."""

    expires: datetime
    lifetime: timedelta

    def is_refresh_due(self, now: datetime) -> bool:
        """True once less than half of the lifetime is left (or it has already expired)."""
        return self.expires - now < self.lifetime / 2


@dataclass(frozen=True, slots=True)
class Validity:
    """The online-signed roles a running control plane keeps fresh (root is re-signed offline)."""

    targets: RoleValidity
    timestamp: RoleValidity


class ReleaseSigner:
    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir

    @classmethod
    def open_or_create(cls, repo_dir: Path, now: datetime) -> ReleaseSigner:
        """The repository at `repo_dir`, created with fresh keys (expiries from `now`) if absent."""
        if not repo_dir.exists():
            _create(repo_dir, now)
        signer = cls(repo_dir)
        signer._open()  # refuses a directory that is not a whole repository
        return signer

    def sign(
        self, out_dir: Path, model: str, version: str, now: datetime
    ) -> tuple[SignedRelease, dict[str, ArtifactManifest]]:
        """Sign every `<profile>/` artifact under `out_dir` as model/version; also return their manifests."""
        manifests = _manifests(out_dir)
        try:
            signed = sign_release(self.repo_dir, out_dir, model, version, now=now)
        except ReleaseExistsError as e:
            raise ConflictError(f"{model} version {version} is already released") from e
        except (ArtifactDirectoryError, InvalidIdentifierError) as e:
            raise ConflictError(f"the compile output cannot be signed: {e}") from e
        except SigningKeyMissingError as e:
            raise UnavailableError("signing keys", str(e)) from e
        return signed, manifests

    def refresh(self, now: datetime) -> tuple[str, ...]:
        """Re-sign, with expiries from `now`, the roles past half their lifetime; return which.

        The targets role re-signed means a new snapshot and timestamp too; the timestamp alone is
        `resign_timestamp` (which also re-signs the snapshot when it would expire first).
        """
        repo = self._open()
        validity = _validity(repo)
        try:
            if validity.targets.is_refresh_due(now):
                repo.publish(now, resign_targets=True)
                return ("targets", "snapshot", "timestamp")
            if validity.timestamp.is_refresh_due(now):
                resign_timestamp(self.repo_dir, now=now)
                return ("timestamp",)
        except SigningKeyMissingError as e:
            raise UnavailableError("signing keys", str(e)) from e
        return ()

    def metadata_path(self, file: str) -> Path | None:
        """The metadata file a TUF client asks for by name; None for any other name or a missing file."""
        if _METADATA_FILE.fullmatch(file) is None:
            return None
        path = self.repo_dir / METADATA_DIRNAME / file
        return path if path.is_file() else None

    def archive_path(self, target_path: str, sha256: str) -> Path:
        """Where a signed target's archive lies: content-addressed, as consistent snapshots name it."""
        model_version, _, profile_tar = target_path.rpartition("/")
        return self.repo_dir / TARGETS_DIRNAME / model_version / f"{sha256}.{profile_tar}"

    def _open(self) -> RepositoryState:
        try:
            return RepositoryState.open(self.repo_dir)
        except (RepositoryNotFoundError, OSError, IndexError, ValueError, DeserializationError) as e:
            raise DataDirError(self.repo_dir, f"not a usable TUF repository: {e}") from e


def _validity(repo: RepositoryState) -> Validity:
    signed, expiries = repo.metadata, repo.expiries
    return Validity(
        targets=RoleValidity(
            expires=signed.targets.signed.expires, lifetime=timedelta(days=expiries.targets_days)
        ),
        timestamp=RoleValidity(
            expires=signed.timestamp.signed.expires, lifetime=timedelta(days=expiries.timestamp_days)
        ),
    )


def _create(repo_dir: Path, now: datetime) -> None:
    repo_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}-", dir=repo_dir.parent))
    try:
        created = init_repository(staging, now=now)
        staging.rename(repo_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(repo_dir.parent)
    logger.info(
        "created the TUF repository %s (keys: %s); keys stay on this host: for production move the "
        "root keys offline (edgefabric keys)",
        repo_dir,
        ", ".join(f"{role} {len(ids)}" for role, ids in created.keyids.items()),
    )


def _manifests(out_dir: Path) -> dict[str, ArtifactManifest]:
    """The manifest of every `<profile>/` directory of a compile output, by profile."""
    try:
        paths = sorted(out_dir.glob(f"*/{MANIFEST_FILENAME}"))
        return {path.parent.name: manifest_decoder.decode(path.read_bytes()) for path in paths}
    except OSError as e:
        raise ConflictError(f"the compile output {out_dir} is not readable: {e.strerror or e}") from e
    except ProtocolError as e:
        raise ConflictError(f"the compile output {out_dir} has a bad manifest: {e}") from e
