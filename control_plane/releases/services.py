"""Creating, reading and serving releases, and keeping the published TUF repository fresh.

Invariants:
- One writer at a time: signing, timestamp refresh and publication hold one lock, so the TUF
  repository on disk changes in whole publications and the Object Store gets them in order. Signing
  and re-signing run in a worker thread; the database is used only from the event loop.
- A release row exists only for a version the repository has signed: the row and its
  `release.created` audit row commit right after signing, before publication.
- The repository on disk is the truth; the Object Store (`fabric_tuf`, `fabric_artifacts`) follows
  it. `keep_fresh` re-signs metadata before it expires (`ReleaseSigner.refresh`) and retries a
  publication that failed (broker down) until one succeeds; the first `keep_fresh` of a process
  publishes everything (idempotent: archives already present are skipped), so a restart heals a
  publication lost in a crash.
- Creating a release needs the broker (503 without it) so that a created release is published
  at once; if that publication fails the release stays created and the answer is a 503 saying so.
- A device caller gets only archives of profiles in its profile's fallback chain; any other
  archive is a 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sqlite_utils import Database

from control_plane.audit.schemas import Actor
from control_plane.audit.services import AuditService
from control_plane.clock import Clock
from control_plane.errors import ConflictError, NotFoundError, UnavailableError
from control_plane.pagination import PageRequest
from control_plane.releases.repositories import ReleaseRepository
from control_plane.releases.schemas import (
    ArchiveFile,
    CompileOutput,
    CreateReleaseRequest,
    DeviceScope,
    ReleaseInfo,
    ReleasePage,
    ReleaseTarget,
)
from control_plane.releases.signer import ReleaseSigner
from hardware_profiles.errors import ProfileError
from hardware_profiles.loader import fallback_chain
from model_compiler.signing.publish import publish_repository
from protocols.errors import BusError
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)

_OBJECT_NAME = re.compile(r"^sha256-([0-9a-f]{64})\Z")


class BuiltArtifacts(Protocol):
    """Where releases take compiled artifacts from (the compile jobs area implements it)."""

    def output_for(self, model: str, version: str, job_id: str | None) -> CompileOutput:
        """The output of compile job `job_id` of model/version; None: its latest succeeded job.

        Raises `NotFoundError` when there is no such job of this model version (or none succeeded)
        and `ConflictError` when the named job has not succeeded.
        """
        ...


class ReleaseService:
    def __init__(
        self,
        db: Database,
        signer: ReleaseSigner,
        audit: AuditService,
        clock: Clock,
        *,
        artifacts: BuiltArtifacts,
        bus: NatsBus | None,
    ) -> None:
        self._db = db
        self._releases = ReleaseRepository(db)
        self._signer = signer
        self._audit = audit
        self._clock = clock
        self._artifacts = artifacts
        self._bus = bus
        self._lock = asyncio.Lock()
        self._is_published = False

    async def create(self, actor: Actor, request: CreateReleaseRequest) -> ReleaseInfo:
        """Sign the compiled artifacts of model/version as a release and publish it."""
        bus = self._connected_bus()
        model, version = request.model, request.version
        if self._releases.get(model, version) is not None:
            raise ConflictError(f"{model} version {version} is already released")
        output = self._artifacts.output_for(model, version, request.compile_job_id)
        async with self._lock:
            now = self._clock.now()
            signed, manifests = await asyncio.to_thread(
                self._signer.sign, output.out_dir, model, version, now
            )
            self._is_published = False
            info = ReleaseInfo(
                model=model,
                version=version,
                model_counter=signed.model_counter,
                targets_version=signed.targets_version,
                compile_job_id=output.job_id,
                targets=[
                    ReleaseTarget(
                        hw_profile=target.hw_profile,
                        target_path=target.path,
                        sha256=target.sha256,
                        size_bytes=target.length,
                        precision=manifests[target.hw_profile].precision,
                        reference_histogram=manifests[target.hw_profile].reference_histogram,
                        host_latency=manifests[target.hw_profile].host_latency,
                    )
                    for target in signed.targets
                ],
                created_at=now,
                created_by=actor.id,
            )
            with self._db.atomic():
                self._releases.insert(info)
                self._audit.record(
                    actor,
                    "release.created",
                    f"release:{model}/{version}",
                    {
                        "model_counter": info.model_counter,
                        "compile_job_id": info.compile_job_id,
                        "profiles": ",".join(target.hw_profile for target in info.targets),
                    },
                )
            try:
                await self._publish(bus)
            except UnavailableError as e:
                raise UnavailableError(
                    "broker",
                    f"{model} version {version} is signed and recorded, but publishing it failed "
                    f"({e.reason}); the control plane retries in the background",
                ) from e
        return info

    def list(self, model: str | None, page: PageRequest) -> ReleasePage:
        items, total = self._releases.page(model, limit=page.limit, offset=page.offset)
        return ReleasePage(items=items, total=total, limit=page.limit, offset=page.offset)

    def get(self, model: str, version: str) -> ReleaseInfo:
        info = self._releases.get(model, version)
        if info is None:
            raise NotFoundError("release", f"{model}/{version}")
        return info

    def reference_histogram(self, model: str, version: str) -> Sequence[int] | None:
        """The top-1 class histogram the release was validated with (for drift); None if unknown.

        Every target of a release is validated on the same samples, so their top-1 histograms
        describe one distribution; the first profile's is used. Binned (non-classifier) histograms
        are not comparable with what devices count, so they give None.
        """
        info = self._releases.get(model, version)
        if info is None or not info.targets:
            return None
        histogram = min(info.targets, key=lambda target: target.hw_profile).reference_histogram
        return histogram.counts if histogram.kind == "top1" else None

    def metadata_path(self, file: str) -> Path:
        """A TUF metadata file by the name clients fetch it (`timestamp.json`, `N.root.json`, ...)."""
        path = self._signer.metadata_path(file)
        if path is None:
            raise NotFoundError("TUF metadata", file)
        return path

    def archive(self, name: str, device: DeviceScope | None) -> ArchiveFile:
        """The archive `sha256-<hex>`; a device sees only archives within its `DeviceScope`.

        Anything else is "not found" for a device, so it cannot even learn that an archive exists.
        """
        match = _OBJECT_NAME.fullmatch(name)
        found = None if match is None else self._releases.target_by_sha256(match.group(1))
        if found is None:
            raise NotFoundError("archive", name)
        model, version, target = found
        if device is not None and (
            (model, version) not in device.assigned or target.hw_profile not in _profile_chain(device.profile)
        ):
            raise NotFoundError("archive", name)
        return ArchiveFile(
            path=self._signer.archive_path(target.target_path, target.sha256), size_bytes=target.size_bytes
        )

    async def keep_fresh(self) -> tuple[str, ...]:
        """Re-sign the roles past half their lifetime; publish whatever is unpublished.

        Returns the roles re-signed (usually none). Raises `UnavailableError` when publication
        fails (it is retried on the next call).
        """
        async with self._lock:
            resigned = await asyncio.to_thread(self._signer.refresh, self._clock.now())
            if resigned:
                self._is_published = False
                logger.info("re-signed the TUF %s metadata", ", ".join(resigned))
            if not self._is_published and self._bus is not None:
                await self._publish(self._bus)
            return resigned

    def _connected_bus(self) -> NatsBus:
        if self._bus is None:
            raise UnavailableError("broker", "this control plane runs without one to publish releases to")
        if not self._bus.is_connected:
            raise UnavailableError("broker", f"not connected to {self._bus.url}")
        return self._bus

    async def _publish(self, bus: NatsBus) -> None:
        """Upload the repository to the Object Store (caller holds the lock)."""
        try:
            publication = await publish_repository(bus.objects, self._signer.repo_dir)
        except BusError as e:
            raise UnavailableError("broker", f"publishing the TUF repository failed: {e}") from e
        self._is_published = True
        logger.info(
            "published the TUF repository: %d metadata files, %d archives uploaded (%d already there)",
            publication.metadata_files,
            publication.archives_uploaded,
            publication.archives_present,
        )


def _profile_chain(profile: str) -> set[str]:
    """The profiles a device of `profile` may run; none for an unknown profile."""
    try:
        return {fallback.name for fallback in fallback_chain(profile)}
    except ProfileError:
        return set()
