"""Release verification on the device: TUF metadata, then the artifact, then its contents.

The edge agent imports this module. It imports only the standard library, tuf, securesystemslib,
msgspec and `protocols` (through `model_compiler.errors`, `.signing.release` and `.signing.archive`,
which import nothing more): never the compiler's toolchain or the signer's key handling.

Invariants:
- Trust starts from `trusted_root`, the device's root from enrollment or configuration, never from
  served metadata; a newer root is accepted only through the signed `N.root.json` chain.
- `metadata_dir` persists what the device has accepted, so older metadata replayed later is
  refused (`RollbackError`) by this and every later call.
- `verify_and_download` writes nothing at `dest_dir` unless every check passed: signatures and
  thresholds, expiry, versions, the target's hash and length, its `hw_profile`, a `model_counter`
  above `min_counter`, a safe archive, and every file against the signed manifest. It stages in a
  directory next to `dest_dir` and renames it into place as its last step.
- No tuf exception escapes: each is wrapped in a typed `VerificationError`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater

from model_compiler.errors import (
    CounterRollbackError,
    DestinationExistsError,
    DownloadFailedError,
    ExpiredMetadataError,
    InvalidMetadataError,
    LengthMismatchError,
    ProfileMismatchError,
    ReleaseMismatchError,
    RollbackError,
    TamperedArtifactError,
    TargetNotFoundError,
    UntrustedSignatureError,
)
from model_compiler.signing.archive import extract_artifact
from model_compiler.signing.release import (
    METADATA_DIRNAME,
    TARGETS_DIRNAME,
    ReleaseCustom,
    SignedTarget,
    release_custom,
    release_target_path,
    signed_target,
)
from protocols.durable import fsync_directory
from protocols.manifest import ArtifactManifest

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact that passed every check, extracted at `directory`."""

    target: SignedTarget
    directory: Path
    manifest: ArtifactManifest


@dataclass(frozen=True)
class ResolvedTarget:
    """A signed target found in fresh, verified metadata; `target` carries its custom fields."""

    path: str
    model: str
    version: str
    profile: str
    info: TargetFile
    target: SignedTarget
    updater: Updater


class LocalDirectoryFetcher(FetcherInterface):
    """Serves URLs under `base_url` from the files under `base_dir` (offline bundles, local repositories).

    A missing file answers like HTTP 404, which ends ngclient's walk of the root chain.
    """

    def __init__(self, base_dir: Path, base_url: str = "local:///") -> None:
        self._base_dir = base_dir
        self._base_url = base_url if base_url.endswith("/") else f"{base_url}/"

    def url_for(self, relative_dir: str) -> str:
        """The URL of a directory under `base_dir`."""
        return f"{self._base_url}{relative_dir.strip('/')}/"

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self._base_url):
            raise exceptions.DownloadError(f"{url} is not under {self._base_url}")
        relative = unquote(url.removeprefix(self._base_url))
        parts = relative.split("/")
        if "\\" in relative or any(part in ("", ".", "..") for part in parts):
            raise exceptions.DownloadError(f"{url}: unsafe path")
        try:
            source = self._base_dir.joinpath(*parts).open("rb")
        except FileNotFoundError as e:
            raise exceptions.DownloadHTTPError(f"{relative} not found in {self._base_dir}", 404) from e
        return _chunks(source)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    with source:
        while chunk := source.read(_CHUNK_BYTES):
            yield chunk


class ReleaseVerifier:
    """Verifies releases against a trusted root with tuf's ngclient, one fresh `Updater` per call."""

    def __init__(
        self,
        trusted_root: bytes,
        metadata_dir: Path,
        fetcher: FetcherInterface,
        metadata_base_url: str,
        targets_base_url: str,
    ) -> None:
        self._trusted_root = trusted_root
        self._metadata_dir = metadata_dir
        self._fetcher = fetcher
        self._metadata_base_url = metadata_base_url
        self._targets_base_url = targets_base_url

    @classmethod
    def for_local_directory(
        cls, trusted_root: bytes, metadata_dir: Path, source_dir: Path
    ) -> ReleaseVerifier:
        """A verifier reading `source_dir/metadata/` and `source_dir/targets/` (a repository or a bundle)."""
        fetcher = LocalDirectoryFetcher(source_dir)
        return cls(
            trusted_root,
            metadata_dir,
            fetcher,
            fetcher.url_for(METADATA_DIRNAME),
            fetcher.url_for(TARGETS_DIRNAME),
        )

    def resolve(self, model: str, version: str, profile: str, *, min_counter: int) -> ResolvedTarget:
        """Refresh metadata and find the signed `<model>/<version>/<profile>.tar`.

        Checks its custom fields against what was asked and its `model_counter` against
        `min_counter` (the counter the device runs now, 0 for none); downloads no target bytes.
        """
        path = release_target_path(model, version, profile)
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        with _typed_tuf_errors("metadata"):
            updater = Updater(
                str(self._metadata_dir),
                self._metadata_base_url,
                target_base_url=self._targets_base_url,
                fetcher=self._fetcher,
                bootstrap=self._trusted_root,
            )
            updater.refresh()
            info = updater.get_targetinfo(path)
        if info is None:
            raise TargetNotFoundError(path)
        custom = release_custom(info)
        _check_release(path, custom, model=model, version=version, profile=profile)
        if custom.model_counter <= min_counter:
            raise CounterRollbackError(path, custom.model_counter, min_counter)
        return ResolvedTarget(
            path=path,
            model=model,
            version=version,
            profile=profile,
            info=info,
            target=signed_target(info),
            updater=updater,
        )

    def install(self, resolved: ResolvedTarget, archive: Path, dest_dir: Path) -> VerifiedArtifact:
        """Check `archive` (downloaded by any means) against the signed length and hashes, then
        extract it safely at `dest_dir` (which must not exist); nothing appears there on failure."""
        if os.path.lexists(dest_dir):
            raise DestinationExistsError(dest_dir)
        with _typed_tuf_errors(resolved.path), archive.open("rb") as f:
            resolved.info.verify_length_and_hashes(f)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".staging", dir=dest_dir.parent))
        try:
            manifest = extract_artifact(archive, staging / "artifact", target=resolved.path)
            _check_release(
                resolved.path,
                manifest,
                model=resolved.model,
                version=resolved.version,
                profile=resolved.profile,
            )
            os.rename(staging / "artifact", dest_dir)
            fsync_directory(dest_dir.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return VerifiedArtifact(target=resolved.target, directory=dest_dir, manifest=manifest)

    def verify_and_download(
        self, model: str, version: str, profile: str, *, min_counter: int, dest_dir: Path
    ) -> VerifiedArtifact:
        """`resolve`, download through the fetcher (verified by tuf), then `install` at `dest_dir`."""
        if os.path.lexists(dest_dir):
            raise DestinationExistsError(dest_dir)
        resolved = self.resolve(model, version, profile, min_counter=min_counter)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dest_dir.name}.", dir=dest_dir.parent) as scratch:
            archive = Path(scratch) / "artifact.tar"
            with _typed_tuf_errors(resolved.path):
                resolved.updater.download_target(resolved.info, filepath=str(archive))
            return self.install(resolved, archive, dest_dir)


def _check_release(
    target: str, signed: ReleaseCustom | ArtifactManifest, *, model: str, version: str, profile: str
) -> None:
    if signed.hw_profile != profile:
        raise ProfileMismatchError(target, profile, signed.hw_profile)
    for field, expected, actual in (("model", model, signed.model), ("version", version, signed.version)):
        if actual != expected:
            raise ReleaseMismatchError(target, field, expected, actual)


@contextmanager
def _typed_tuf_errors(what: str) -> Iterator[None]:
    """Wrap tuf's exceptions about `what` ("metadata" or a target path) in `VerificationError`s."""
    try:
        yield
    except exceptions.UnsignedMetadataError as e:
        raise UntrustedSignatureError(str(e)) from e
    except exceptions.BadVersionNumberError as e:
        raise RollbackError(str(e)) from e
    except exceptions.ExpiredMetadataError as e:
        raise ExpiredMetadataError(str(e)) from e
    except exceptions.LengthOrHashMismatchError as e:
        raise TamperedArtifactError(what, str(e)) from e
    except exceptions.DownloadLengthMismatchError as e:
        raise LengthMismatchError(what, str(e)) from e
    except exceptions.RepositoryError as e:
        raise InvalidMetadataError(str(e)) from e
    except exceptions.DownloadError as e:
        raise DownloadFailedError(what, str(e)) from e
