"""Where the agent gets TUF metadata and artifact archives: NATS, HTTP, or an offline bundle.

Every source gives the same two things: a `ReleaseVerifier` over metadata it can reach (all of it
untrusted until TUF has checked it against the device's own root), and a resumable download of
a signed archive to a local file. Nothing downloaded is trusted before `ReleaseVerifier.install`
checks its signed length and hashes.

- `NatsArtifactSource`: mirrors the metadata bucket into a local directory, then verifies it
  offline; archives come from the Object Store by content address, resuming partial downloads.
  A versioned metadata file (`N.<role>.json`) already in the mirror is not fetched again: with
  consistent snapshots its content never changes under its name (its parent pins its hash), so an
  update costs the fetch of what changed, not of the repository's whole history.
- `HttpArtifactSource` (MQTT-only devices): metadata and archives over HTTP(S) from
  `artifact_base_url` (`metadata/<file>`, `objects/sha256-<hex>`), resuming with Range requests.
- `BundleSource`: an offline bundle directory (air-gapped sites); the trust root is the device's.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from model_compiler.errors import DownloadFailedError
from model_compiler.signing.release import METADATA_DIRNAME, SignedTarget
from model_compiler.verification import ReleaseVerifier
from protocols import subjects
from protocols.transports.nats_bus import NatsBus
from protocols.transports.nats_objects import NatsObjects

_CHUNK = 1 << 20
_VERSIONED_METADATA = re.compile(r"[0-9]+\..+\.json")


class ArtifactSource(ABC):
    """Metadata + archives for one device (see module docstring)."""

    @abstractmethod
    async def verifier(self, trusted_root: bytes, metadata_cache: Path) -> ReleaseVerifier:
        """A verifier over the source's current metadata (refreshes any local mirror first)."""

    @abstractmethod
    async def download(self, target: SignedTarget, dest: Path) -> int:
        """Fetch the archive of `target` to `dest` (resuming a partial one); return bytes fetched now."""


class NatsArtifactSource(ArtifactSource):
    def __init__(self, bus: NatsBus, mirror_dir: Path) -> None:
        self._bus = bus
        self._mirror = mirror_dir

    @property
    def _objects(self) -> NatsObjects:
        return self._bus.objects  # valid once the bus is connected

    async def verifier(self, trusted_root: bytes, metadata_cache: Path) -> ReleaseVerifier:
        metadata_dir = self._mirror / METADATA_DIRNAME
        metadata_dir.mkdir(parents=True, exist_ok=True)
        names = await self._objects.list_names(subjects.METADATA_BUCKET)
        for name in names:  # small JSON files; the verifier decides what to believe
            if _VERSIONED_METADATA.fullmatch(name) and (metadata_dir / name).exists():
                continue
            await self._objects.fetch_to_file(subjects.METADATA_BUCKET, name, metadata_dir / name)
        return ReleaseVerifier.for_local_directory(trusted_root, metadata_cache, self._mirror)

    async def download(self, target: SignedTarget, dest: Path) -> int:
        result = await self._objects.fetch_to_file(
            subjects.ARTIFACT_BUCKET,
            subjects.artifact_object_name(target.sha256),
            dest,
            expected_sha256=target.sha256,
        )
        return result.size_bytes - result.resumed_from_bytes


class HttpFetcher(FetcherInterface):
    """tuf's fetcher interface over urllib (stdlib), with an optional bearer token."""

    def __init__(self, token: str | None = None, timeout_s: float = 30.0) -> None:
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s

    def _fetch(self, url: str) -> Iterator[bytes]:
        request = urllib.request.Request(url, headers=self._headers)
        try:
            response = urllib.request.urlopen(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as e:
            raise exceptions.DownloadHTTPError(f"{url}: {e.reason}", e.code) from e
        except (urllib.error.URLError, OSError) as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e

        def chunks() -> Iterator[bytes]:
            with response:
                while chunk := response.read(_CHUNK):
                    yield chunk

        return chunks()


class HttpArtifactSource(ArtifactSource):
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self._base = base_url.rstrip("/") + "/"
        self._token = token
        self._timeout_s = timeout_s

    async def verifier(self, trusted_root: bytes, metadata_cache: Path) -> ReleaseVerifier:
        return ReleaseVerifier(
            trusted_root,
            metadata_cache,
            HttpFetcher(self._token, self._timeout_s),
            f"{self._base}{METADATA_DIRNAME}/",
            f"{self._base}targets/",
        )

    async def download(self, target: SignedTarget, dest: Path) -> int:
        return await asyncio.to_thread(self._download_blocking, target, dest)

    def _download_blocking(self, target: SignedTarget, dest: Path) -> int:
        """Range-resume into `<dest>.part`; the verifier checks length and hashes afterwards."""
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > target.length:
            part.unlink()
            have = 0
        url = f"{self._base}objects/{subjects.artifact_object_name(target.sha256)}"
        headers = {"Range": f"bytes={have}-"} if have else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        fetched = 0
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=self._timeout_s
            ) as r:
                mode = "ab" if have and r.status == 206 else "wb"
                with part.open(mode) as out:
                    while chunk := r.read(_CHUNK):
                        out.write(chunk)
                        fetched += len(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise DownloadFailedError(target.path, f"{url}: {e}") from e
        part.replace(dest)
        return fetched


class BundleSource(ArtifactSource):
    """An offline bundle: `metadata/` + `targets/` on local disk (USB stick, air gap)."""

    def __init__(self, bundle_dir: Path) -> None:
        self._bundle = bundle_dir

    async def verifier(self, trusted_root: bytes, metadata_cache: Path) -> ReleaseVerifier:
        return ReleaseVerifier.for_local_directory(trusted_root, metadata_cache, self._bundle)

    async def download(self, target: SignedTarget, dest: Path) -> int:
        matches = list((self._bundle / "targets").rglob(f"{target.sha256}.*"))
        if not matches:
            raise DownloadFailedError(target.path, f"not in bundle {self._bundle}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, matches[0], dest)
        return target.length
