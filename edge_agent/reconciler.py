"""Converging this device on its desired state, one model at a time, through the lifecycle table.

For each model assignment whose version differs from what is served: for each profile of this
device's fallback chain (most preferred first) resolve the signed target in fresh TUF metadata,
download it (resumable, after a free-disk check), verify and unpack it into the store, run the
acceptance test, and only then switch `current` and the served session. A profile whose artifact
fails acceptance (or cannot run here) moves on to the next profile; a verification failure (an
attack or a broken release) stops the update. Either way the previous model keeps serving.

Every outcome lands in the model's lifecycle record (`last_error` is a typed `ErrorReport`) and
is handed to `on_change`, which reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_agent.acceptance import run_acceptance
from edge_agent.errors import AgentError, InsufficientDiskError, NoArtifactForDeviceError
from edge_agent.lifecycle import Lifecycle
from edge_agent.serving import ModelServer, ServedModel
from edge_agent.sources import ArtifactSource
from edge_agent.store import InstalledModel, ModelStore
from hardware_profiles.errors import ProfileError
from model_compiler.errors import TargetNotFoundError, VerificationError
from model_compiler.verification import ReleaseVerifier, ResolvedTarget
from protocols.errors import FabricError
from protocols.manifest import MANIFEST_FILENAME, ArtifactManifest, manifest_decoder
from protocols.messages import DesiredState, ErrorReport, ModelAssignment

logger = logging.getLogger(__name__)

DISK_HEADROOM = 3  # archive + unpacked copy + margin


def error_report(error: FabricError) -> ErrorReport:
    return ErrorReport(code=type(error).__name__, message=str(error), retryable=error.retryable)


class Reconciler:
    def __init__(
        self,
        *,
        store: ModelStore,
        lifecycle: Lifecycle,
        server: ModelServer,
        source: ArtifactSource,
        trusted_root: bytes,
        profiles: list[str],
        metadata_cache: Path,
        inference_threads: int | None = None,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.server = server
        self.source = source
        self.trusted_root = trusted_root
        self.profiles = profiles
        self.metadata_cache = metadata_cache
        self.inference_threads = inference_threads
        self._on_change = on_change
        self._lock = asyncio.Lock()

    async def _changed(self) -> None:
        if self._on_change is not None:
            await self._on_change()

    async def apply(self, desired: DesiredState) -> None:
        """Converge on `desired` (stale revisions are ignored)."""
        async with self._lock:
            if desired.revision < self.lifecycle.state.observed_revision:
                logger.info("ignoring stale desired state revision %d", desired.revision)
                return
            for assignment in desired.models:
                if assignment.mode == "shadow":
                    await self._ensure_shadow(assignment)
                else:
                    await self._ensure(assignment)
            self.lifecycle.state.observed_revision = desired.revision
            self.lifecycle.save()
            await self._changed()

    async def resume_interrupted(self) -> None:
        """Finish updates that were in flight when the agent stopped (after `kill -9`, say)."""
        async with self._lock:
            for name in self.lifecycle.interrupted():
                record = self.lifecycle.record(name)
                self.lifecycle.apply(name, "restarted")
                if record.target is not None:
                    await self._ensure(record.target, resuming=True)
            await self._changed()

    async def install(self, assignment: ModelAssignment) -> None:
        """Install one assignment outside the desired-state flow (offline bundles)."""
        async with self._lock:
            await self._ensure(assignment)

    async def roll_back(self, model: str) -> InstalledModel:
        async with self._lock:
            installed = await asyncio.to_thread(self.store.roll_back, model)
            result = await asyncio.to_thread(run_acceptance, installed, threads=self.inference_threads)
            await self.server.activate(ServedModel(model, installed.manifest, result.session))
            record = self.lifecycle.record(model)
            record.installed_counter = installed.signed.model_counter
            self.lifecycle.apply(model, "rollback_requested")
            await self._changed()
            return installed

    async def _ensure(self, assignment: ModelAssignment, *, resuming: bool = False) -> None:
        name, release = assignment.model, assignment.release
        current = self.store.current(name)
        record = self.lifecycle.record(name)
        if current is not None and current.manifest.version == release.version:
            if record.state != "active":
                record.target = assignment
                self.lifecycle.apply(name, "target_satisfied")
            return
        if not resuming:
            record.target = assignment
            self.lifecycle.apply(name, "target_changed")
        await self._changed()
        try:
            verifier = await self.source.verifier(self.trusted_root, self.metadata_cache)
            tried: list[str] = []
            for profile in self.profiles:
                tried.append(profile)
                if await self._try_profile(verifier, assignment, profile):
                    return
            self.lifecycle.apply(
                name,
                "failed",
                error=error_report(NoArtifactForDeviceError(name, release.version, tried))
                if record.last_error is None
                else record.last_error,
            )
        except (AgentError, VerificationError) as e:
            logger.warning("%s %s refused: %s", name, release.version, e)
            self.lifecycle.apply(name, "failed", error=error_report(e))
        except FabricError as e:  # transport or source trouble: retried on the next desired state
            logger.warning("%s %s not installed: %s", name, release.version, e)
            self.lifecycle.apply(name, "failed", error=error_report(e))
        await self._changed()

    async def _try_profile(
        self, verifier: ReleaseVerifier, assignment: ModelAssignment, profile: str
    ) -> bool:
        """Install `profile`'s artifact; False if the release has none or it fails on this device."""
        name, version = assignment.model, assignment.release.version
        record = self.lifecycle.record(name)
        try:
            resolved = await asyncio.to_thread(
                verifier.resolve, name, version, profile, min_counter=record.installed_counter
            )
        except TargetNotFoundError:
            return False
        target = resolved.target
        archive = await self._download(resolved)
        self.lifecycle.apply(name, "downloaded")
        installed = await self._unpack(verifier, resolved, archive)
        self.lifecycle.apply(name, "verified")
        self.lifecycle.apply(name, "installed")
        try:
            result = await asyncio.to_thread(run_acceptance, installed, threads=self.inference_threads)
        except (AgentError, ProfileError) as e:  # fails here: try the next profile of the chain
            logger.warning("%s %s on %s rejected: %s", name, version, profile, e)
            self.lifecycle.apply(name, "rejected", error=error_report(e))
            await self._changed()
            return False
        await asyncio.to_thread(self.store.activate, name, target.sha256)
        await self.server.activate(ServedModel(name, installed.manifest, result.session))
        record.installed_counter = target.model_counter
        self.lifecycle.apply(name, "accepted")
        await asyncio.to_thread(self.store.prune)
        logger.info("%s %s active (profile %s)", name, version, profile)
        return True

    async def _download(self, resolved: ResolvedTarget) -> Path:
        """The target's archive in `downloads/` (resumed if partial); nothing if already unpacked."""
        target = resolved.target
        archive = self.store.downloads / f"{target.sha256}.tar"
        if not self.store.has_object(target.sha256):
            needed = target.length * DISK_HEADROOM
            if self.store.free_bytes() < needed:
                raise InsufficientDiskError(self.store.root, needed, self.store.free_bytes())
            fetched = await self.source.download(target, archive)
            logger.info("downloaded %s: fetched %d of %d bytes now", target.path, fetched, target.length)
        return archive

    async def _unpack(
        self, verifier: ReleaseVerifier, resolved: ResolvedTarget, archive: Path
    ) -> InstalledModel:
        """Verify the archive against its signed length and hashes and unpack it into the store."""
        target = resolved.target
        if not self.store.has_object(target.sha256):
            await asyncio.to_thread(verifier.install, resolved, archive, self.store.object_dir(target.sha256))
        self.store.record_signed_target(target)
        await asyncio.to_thread(archive.unlink, missing_ok=True)
        return InstalledModel(
            name=resolved.model,
            directory=self.store.object_dir(target.sha256),
            manifest=resolved_manifest(self.store, target.sha256),
            signed=target,
        )

    async def _ensure_shadow(self, assignment: ModelAssignment) -> None:
        """Shadow releases are verified and tested like active ones but never become current."""
        name, version = assignment.model, assignment.release.version
        shadow = self.server.shadow_of(name)
        if shadow is not None and shadow.version == version:
            return
        try:
            verifier = await self.source.verifier(self.trusted_root, self.metadata_cache)
            for profile in self.profiles:
                try:
                    resolved = await asyncio.to_thread(
                        verifier.resolve, name, version, profile, min_counter=0
                    )
                except TargetNotFoundError:
                    continue
                installed = await self._unpack(verifier, resolved, await self._download(resolved))
                result = await asyncio.to_thread(run_acceptance, installed, threads=self.inference_threads)
                await self.server.set_shadow(name, ServedModel(name, installed.manifest, result.session))
                return
        except FabricError as e:
            logger.warning("shadow %s %s not installed: %s", name, version, e)
            self.lifecycle.record(name).last_error = error_report(e)
            self.lifecycle.save()


def resolved_manifest(store: ModelStore, sha256: str) -> ArtifactManifest:
    return manifest_decoder.decode((store.object_dir(sha256) / MANIFEST_FILENAME).read_bytes())
