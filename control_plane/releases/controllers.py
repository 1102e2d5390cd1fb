"""`/api/v1/releases` (create: operator; read: viewer) and `/api/v1/tuf` (the repository over HTTP).

`/api/v1/tuf` is the HTTP contract of the agent's `HttpArtifactSource` (MQTT-only devices): its
base URL is `<api>/api/v1/tuf`, metadata is `metadata/<file>` and archives `objects/sha256-<hex>`,
with single `Range` requests (206 + `Content-Range`, 416 past the end). Metadata is public (it is
signed; TUF clients verify it); archives need a viewer token or a device credential, and a device
gets only archives for its own profile's fallback chain.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import File, Stream

from control_plane.auth.access import BEARER, DEVICE_ROUTE, PUBLIC, requires
from control_plane.auth.schemas import DeviceIdentity, Identity
from control_plane.auth.tokens import Role
from control_plane.fleet.services import DeviceService
from control_plane.pagination import PageRequest
from control_plane.releases.schemas import CreateReleaseRequest, DeviceScope, ReleaseInfo, ReleasePage
from control_plane.releases.services import ReleaseService
from control_plane.web.errors import error_responses
from control_plane.web.ranges import ranged_file

_OCTETS = "application/octet-stream"


class ReleaseController(Controller):
    path = "/releases"
    tags = ("releases",)
    opt = requires(Role.VIEWER)
    security = BEARER

    @post(
        "/",
        status_code=201,
        opt=requires(Role.OPERATOR),
        responses=error_responses(400, 401, 403, 404, 409, 413, 429, 503),
    )
    async def create_release(
        self,
        data: JSONBody[CreateReleaseRequest],
        request: Request[Identity, Any, Any],
        releases: NamedDependency[ReleaseService],
    ) -> ReleaseInfo:
        """Sign a compiled model version (its latest succeeded compile job, or `compile_job_id`).

        One TUF target per profile, with the model's next `model_counter`; published to the
        Object Store at once. A version already released is a 409; without a broker, a 503.
        """
        return await releases.create(request.user.actor, data)

    @get("/", responses=error_responses(400, 401, 403, 429))
    async def list_releases(
        self,
        page: NamedDependency[PageRequest],
        releases: NamedDependency[ReleaseService],
        model: Annotated[str | None, QueryParameter(description="only this model's releases")] = None,
    ) -> ReleasePage:
        """Releases, newest first; `?model=` keeps one model's."""
        return releases.list(model, page)

    @get("/{model:str}/{version:str}", responses=error_responses(401, 403, 404, 429))
    async def get_release(
        self, model: FromPath[str], version: FromPath[str], releases: NamedDependency[ReleaseService]
    ) -> ReleaseInfo:
        return releases.get(model, version)


class TufController(Controller):
    path = "/tuf"
    tags = ("tuf",)

    @get(
        "/metadata/{file:str}",
        opt=PUBLIC,
        media_type="application/json",
        responses=error_responses(404, 429),
    )
    async def get_metadata(self, file: FromPath[str], releases: NamedDependency[ReleaseService]) -> File:
        """Signed TUF metadata: `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`."""
        return File(
            path=releases.metadata_path(file),
            media_type="application/json",
            content_disposition_type="inline",
            headers={"Cache-Control": "no-cache"},
        )

    @get(
        "/objects/{name:str}",
        opt={**requires(Role.VIEWER), **DEVICE_ROUTE},
        security=BEARER,
        media_type=_OCTETS,
        responses=error_responses(401, 403, 404, 416, 429),
    )
    async def get_object(
        self,
        name: FromPath[str],
        request: Request[Identity | DeviceIdentity, Any, Any],
        releases: NamedDependency[ReleaseService],
        devices: NamedDependency[DeviceService],
    ) -> File | Stream:
        """An artifact archive by content address `sha256-<hex>`; one `Range: bytes=a-b` answers 206.

        A device credential gets only archives of releases its desired state assigns to it.
        """
        caller = request.user
        scope = None
        if isinstance(caller, DeviceIdentity):
            desired = devices.desired(caller, caller.device_id)
            assigned = frozenset((m.model, m.release.version) for m in desired.models)
            scope = DeviceScope(profile=caller.profile, assigned=assigned)
        archive = releases.archive(name, scope)
        return ranged_file(archive.path, archive.size_bytes, request.headers.get("range"))
