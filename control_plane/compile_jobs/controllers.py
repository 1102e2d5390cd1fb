"""`POST /api/v1/models/{name}/versions/{version}/compile` (operator) and `/api/v1/compile-jobs`
(viewer): thin adapters over `CompileJobService`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control_plane.auth.access import BEARER, requires
from control_plane.auth.schemas import Identity
from control_plane.auth.tokens import Role
from control_plane.compile_jobs.schemas import CompileJob, CompileJobPage, JobState, StartCompileRequest
from control_plane.compile_jobs.services import CompileJobService
from control_plane.pagination import PageRequest
from control_plane.web.errors import error_responses

AuthedRequest = Request[Identity, Any, Any]


@post(
    "/models/{name:str}/versions/{version:str}/compile",
    status_code=202,
    opt=requires(Role.OPERATOR),
    security=BEARER,
    tags=["compile jobs"],
    responses=error_responses(400, 401, 403, 404, 413, 422, 429),
)
async def start_compile(
    name: FromPath[str],
    version: FromPath[str],
    data: JSONBody[StartCompileRequest],
    request: AuthedRequest,
    compile_jobs: NamedDependency[CompileJobService],
) -> CompileJob:
    """Queue a compile of this model version for `profiles` (null: every hardware profile).

    Answers 202 with the queued job; follow it at `/api/v1/compile-jobs/{id}`. An unknown profile,
    or a version uploaded without calibration or validation samples, is a 422.
    """
    return compile_jobs.start(request.user.actor, name, version, data)


class CompileJobController(Controller):
    path = "/compile-jobs"
    tags = ("compile jobs",)
    opt = requires(Role.VIEWER)
    security = BEARER

    @get("/", responses=error_responses(400, 401, 403, 429))
    async def list_compile_jobs(
        self,
        page: NamedDependency[PageRequest],
        compile_jobs: NamedDependency[CompileJobService],
        model: Annotated[str | None, QueryParameter(description="only jobs of this model")] = None,
        version: Annotated[str | None, QueryParameter(description="only jobs of this version")] = None,
        job_state: Annotated[
            JobState | None, QueryParameter(name="state", description="only jobs in this state")
        ] = None,
    ) -> CompileJobPage:
        """Compile jobs, newest first, each with its profiles' progress and results."""
        return compile_jobs.list_jobs(page, model=model, version=version, state=job_state)

    @get("/{job_id:str}", responses=error_responses(401, 403, 404, 429))
    async def get_compile_job(
        self, job_id: FromPath[str], compile_jobs: NamedDependency[CompileJobService]
    ) -> CompileJob:
        """A job's state and, per profile, its stage, metrics, latency, size and failure reason."""
        return compile_jobs.get(job_id)
