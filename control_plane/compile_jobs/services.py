"""Starting, tracking and reading compile jobs.

Invariants:
- A job names an existing model version that has calibration or validation samples (the compiler
  needs held-out samples to prove each build) and only packaged hardware profiles; otherwise it is
  refused (404 / 422) and nothing is queued.
- A job's state moves only forward: `queued -> running -> succeeded | failed | interrupted`.
  It `succeeded` once at least one profile built, and `failed` when none did. Each change commits
  with its audit row (`compile.queued` by the caller; `compile.started`, `compile.succeeded`,
  `compile.failed`, `compile.interrupted` by the system).
- When a job fails as a whole (the worker crashed, timed out, or refused the model) or is
  interrupted, every profile not already rejected or failed becomes failed with the job's reason.
- Only a succeeded job has an output directory (`<build_dir>/<job_id>/<profile>/`, one per built
  profile, as `compile_model` writes it); the runner removes any other job's partial output.
- The database is used only from the event loop; `discard_output` touches only files and may run
  in a worker thread.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from sqlite_utils import Database

from control_plane.audit.schemas import SYSTEM_ACTOR, Actor, AuditDetail
from control_plane.audit.services import AuditService
from control_plane.clock import Clock
from control_plane.compile_jobs.messages import Failed, Finished, WorkerRequest
from control_plane.compile_jobs.repositories import CompileJobRepository
from control_plane.compile_jobs.schemas import CompileJob, CompileJobPage, JobState, StartCompileRequest
from control_plane.errors import ConflictError, InvalidArgumentError, NotFoundError
from control_plane.pagination import PageRequest
from control_plane.registry.blobs import BlobStore
from control_plane.registry.services import RegistryService
from hardware_profiles.loader import all_profiles


class CompileJobService:
    def __init__(
        self,
        db: Database,
        registry: RegistryService,
        blobs: BlobStore,
        audit: AuditService,
        clock: Clock,
        *,
        build_dir: Path,
    ) -> None:
        self._db = db
        self._jobs = CompileJobRepository(db)
        self._registry = registry
        self._blobs = blobs
        self._audit = audit
        self._clock = clock
        self._build_dir = build_dir

    # --- the API ---------------------------------------------------------------------------------

    def start(self, actor: Actor, model: str, version: str, request: StartCompileRequest) -> CompileJob:
        """Queue a job compiling model/version for `request.profiles` (None: every packaged profile)."""
        info = self._registry.get(model, version)
        if info.calibration_sha256 is None and info.validation_sha256 is None:
            raise InvalidArgumentError(
                "model",
                f"{model} version {version} has no calibration or validation samples; compiling "
                "needs them to validate each build (upload the version with --calibration/--validation)",
            )
        profiles = _known_profiles(request.profiles)
        job_id = secrets.token_hex(8)
        with self._db.atomic():
            self._jobs.insert(
                job_id=job_id,
                model=model,
                version=version,
                quantization=request.quantization,
                profiles=profiles,
                created_at=self._clock.now(),
                created_by=actor.id,
            )
            self._audit.record(
                actor,
                "compile.queued",
                _target(job_id),
                {"model": model, "version": version, "profiles": ",".join(profiles)},
            )
        return self.get(job_id)

    def list_jobs(
        self,
        page: PageRequest,
        *,
        model: str | None = None,
        version: str | None = None,
        state: JobState | None = None,
    ) -> CompileJobPage:
        items, total = self._jobs.page(
            limit=page.limit, offset=page.offset, model=model, version=version, state=state
        )
        return CompileJobPage(items=items, total=total, limit=page.limit, offset=page.offset)

    def get(self, job_id: str) -> CompileJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError("compile job", job_id)
        return job

    # --- for the releases area -------------------------------------------------------------------

    def output_dir(self, job_id: str) -> Path:
        """`<build_dir>/<job_id>`: one `<profile>/manifest.json` directory per built profile.

        Raises `NotFoundError` for an unknown job and `ConflictError` for one that has not succeeded.
        """
        job = self.get(job_id)
        if job.state != "succeeded":
            raise ConflictError(f"compile job {job_id} is {job.state}; only a succeeded job has artifacts")
        return self._build_dir / job_id

    def latest_succeeded(self, model: str, version: str) -> CompileJob | None:
        """The most recently queued job of model/version that succeeded, if any."""
        return self._jobs.latest(model, version, "succeeded")

    # --- for the runner --------------------------------------------------------------------------

    def log_path(self, job_id: str) -> Path:
        """The worker's stderr (toolchain output) of a job, kept after it finishes."""
        return self._build_dir / f"{job_id}.log"

    def claim_next(self) -> tuple[CompileJob, WorkerRequest] | None:
        """The oldest queued job, now `running`, and what its worker must do; None: queue empty."""
        job_id = self._jobs.oldest_queued()
        if job_id is None:
            return None
        with self._db.atomic():
            if not self._jobs.set_running(job_id, self._clock.now()):
                return None
            self._audit.record(SYSTEM_ACTOR, "compile.started", _target(job_id))
        job = self.get(job_id)
        info = self._registry.get(job.model, job.version)
        self._build_dir.mkdir(parents=True, exist_ok=True)
        request = WorkerRequest(
            model_path=str(self._registry.onnx_path(info)),
            calibration_path=self._blob_path(info.calibration_sha256),
            validation_path=self._blob_path(info.validation_sha256),
            profiles=[build.profile for build in job.profiles],
            out_dir=str(self._build_dir / job_id),
            model=job.model,
            version=job.version,
            quantization=job.quantization,
        )
        return job, request

    def record_progress(self, job_id: str, profile: str, stage: str) -> None:
        self._jobs.set_stage(job_id, profile, stage)

    def finish(self, job_id: str, outcome: Finished | Failed) -> CompileJob:
        """Record the worker's outcome: succeeded if at least one profile built, else failed."""
        with self._db.atomic():
            if self.get(job_id).state != "running":
                return self.get(job_id)
            if isinstance(outcome, Finished):
                for build in outcome.builds:
                    self._jobs.set_build(job_id, build)
                built = sum(build.status == "built" for build in outcome.builds)
                reason = None if built else "no profile built (each profile says why)"
            else:
                built, reason = 0, outcome.reason
            if reason is not None:
                self._jobs.fail_open_builds(job_id, reason)
            state: JobState = "succeeded" if built else "failed"
            self._jobs.set_finished(job_id, state, reason, self._clock.now())
            job = self.get(job_id)
            detail: AuditDetail = {
                status: sum(b.status == status for b in job.profiles) for status in _OUTCOMES
            }
            self._audit.record(
                SYSTEM_ACTOR, f"compile.{state}", _target(job_id), {**detail, "reason": reason}
            )
        return job

    def interrupt(self, job_id: str, reason: str) -> None:
        """A running job cut off (control plane stopped or crashed): `interrupted`, never re-run."""
        with self._db.atomic():
            if self.get(job_id).state != "running":
                return
            self._jobs.fail_open_builds(job_id, reason)
            self._jobs.set_finished(job_id, "interrupted", reason, self._clock.now())
            self._audit.record(SYSTEM_ACTOR, "compile.interrupted", _target(job_id), {"reason": reason})

    def interrupt_leftovers(self) -> list[str]:
        """Jobs left `running` by a crash of an earlier process become `interrupted`; their ids."""
        leftovers = self._jobs.ids_in_state("running")
        for job_id in leftovers:
            self.interrupt(job_id, "the control plane stopped during the compile (found running at start)")
        return leftovers

    def discard_output(self, job_id: str) -> None:
        """Remove what a job that did not succeed left under `<build_dir>/<job_id>` (files only)."""
        shutil.rmtree(self._build_dir / job_id, ignore_errors=True)

    def _blob_path(self, sha256: str | None) -> str | None:
        return None if sha256 is None else str(self._blobs.path(sha256))


_OUTCOMES = ("built", "rejected", "failed")


def _target(job_id: str) -> str:
    return f"compile-job:{job_id}"


def _known_profiles(requested: list[str] | None) -> list[str]:
    known = all_profiles()
    if requested is None:
        return list(known)
    for name in requested:
        if name not in known:
            raise InvalidArgumentError(
                "profiles", f"unknown hardware profile {name!r} (known: {', '.join(known)})"
            )
    return list(dict.fromkeys(requested))
