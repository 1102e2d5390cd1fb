"""Releases take their artifacts from compile jobs: `BuiltArtifacts` over `CompileJobService`.

Invariant: the output handed to signing belongs to a succeeded job of exactly the requested model
version; a job of another model or version is "not found" for this request, never signed under the
wrong name.
"""

from __future__ import annotations

from control_plane.compile_jobs.services import CompileJobService
from control_plane.errors import NotFoundError
from control_plane.releases.schemas import CompileOutput


class CompiledArtifacts:
    def __init__(self, compile_jobs: CompileJobService) -> None:
        self._compile_jobs = compile_jobs

    def output_for(self, model: str, version: str, job_id: str | None) -> CompileOutput:
        if job_id is None:
            latest = self._compile_jobs.latest_succeeded(model, version)
            if latest is None:
                raise NotFoundError("succeeded compile job of model version", f"{model}/{version}")
            job_id = latest.id
        job = self._compile_jobs.get(job_id)
        if (job.model, job.version) != (model, version):
            raise NotFoundError(f"compile job of model version {model}/{version}", job_id)
        return CompileOutput(job_id=job_id, out_dir=self._compile_jobs.output_dir(job_id))
