"""`/api/v1/enrollment-tokens` (admin), `/api/v1/enroll` (public), `/api/v1/devices` (viewer to read,
operator to change; a device credential may read its own device, desired and reported state).

Thin adapters over `EnrollmentService` and `DeviceService`; the services enforce that a device sees
only itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control_plane.auth.access import BEARER, DEVICE_ROUTE, PUBLIC, requires
from control_plane.auth.schemas import DeviceIdentity, Identity
from control_plane.auth.tokens import Role
from control_plane.errors import InvalidArgumentError
from control_plane.fleet.enrollment import EnrollmentService
from control_plane.fleet.schemas import (
    CreatedEnrollmentToken,
    CreateEnrollmentTokenRequest,
    DeviceFilter,
    DeviceInfo,
    DevicePage,
    EnrollmentTokenInfo,
    EnrollmentTokenPage,
    PutDesiredStateRequest,
    UpdateLabelsRequest,
)
from control_plane.fleet.services import DeviceService
from control_plane.pagination import PageRequest
from control_plane.web.errors import error_responses
from protocols.messages import DesiredState, EnrollmentReply, EnrollmentRequest, ReportedState

AuthedRequest = Request[Identity, Any, Any]
DeviceOrOperatorRequest = Request[Identity | DeviceIdentity, Any, Any]
_DEVICE_READ = {**requires(Role.VIEWER), **DEVICE_ROUTE}


class EnrollmentTokenController(Controller):
    path = "/enrollment-tokens"
    tags = ("enrollment",)
    opt = requires(Role.ADMIN)
    security = BEARER

    @post("/", status_code=201, responses=error_responses(400, 401, 403, 413, 422, 429))
    async def create_enrollment_token(
        self,
        data: JSONBody[CreateEnrollmentTokenRequest],
        request: AuthedRequest,
        enrollment: NamedDependency[EnrollmentService],
    ) -> CreatedEnrollmentToken:
        """Issue an enrollment token (default: one use, 24 h). Its secret appears only here."""
        return enrollment.create_token(request.user.actor, data)

    @get("/", responses=error_responses(400, 401, 403, 429))
    async def list_enrollment_tokens(
        self, page: NamedDependency[PageRequest], enrollment: NamedDependency[EnrollmentService]
    ) -> EnrollmentTokenPage:
        """Enrollment tokens, newest first (active, expired, used and revoked), without secrets."""
        return enrollment.list_tokens(page)

    @get("/{token_id:str}", responses=error_responses(401, 403, 404, 429))
    async def get_enrollment_token(
        self, token_id: FromPath[str], enrollment: NamedDependency[EnrollmentService]
    ) -> EnrollmentTokenInfo:
        return enrollment.get_token(token_id)

    @post("/{token_id:str}/revoke", status_code=200, responses=error_responses(401, 403, 404, 413, 429))
    async def revoke_enrollment_token(
        self, token_id: FromPath[str], request: AuthedRequest, enrollment: NamedDependency[EnrollmentService]
    ) -> EnrollmentTokenInfo:
        """Refuse the token from now on (idempotent); devices enrolled with it stay enrolled."""
        return enrollment.revoke_token(request.user.actor, token_id)


@post(
    "/enroll",
    opt=PUBLIC,
    status_code=201,
    tags=["enrollment"],
    responses=error_responses(400, 401, 409, 413, 422, 429),
)
async def enroll_device(
    data: JSONBody[EnrollmentRequest],
    request: Request[Any, Any, Any],
    enrollment: NamedDependency[EnrollmentService],
) -> EnrollmentReply:
    """Enroll a device: enrollment token + Ed25519 public key + the token signed by that key.

    401: the token is unknown, expired, used or revoked, or the proof does not verify; 409: the key
    or the requested device id is taken; 422: a malformed key, proof or label. Nothing is stored then.
    """
    return enrollment.enroll(data, api_url=str(request.base_url))


class DeviceController(Controller):
    path = "/devices"
    tags = ("devices",)
    opt = requires(Role.VIEWER)
    security = BEARER

    @get("/", responses=error_responses(400, 401, 403, 422, 429))
    async def list_devices(
        self,
        page: NamedDependency[PageRequest],
        devices: NamedDependency[DeviceService],
        label: Annotated[
            list[str] | None, QueryParameter(description="`key=value`; repeat it: every one must match")
        ] = None,
        profile: Annotated[str | None, QueryParameter(description="hardware profile")] = None,
        online: Annotated[bool | None, QueryParameter(description="heartbeat recently (true) or not")] = None,
        model: Annotated[
            str | None, QueryParameter(description="`name` or `name:version` of an active model")
        ] = None,
    ) -> DevicePage:
        """Devices by id, with filters; `online` is computed from the last heartbeat."""
        labels = []
        for pair in label or ():
            key, is_pair, value = pair.partition("=")
            if not is_pair or not key:
                raise InvalidArgumentError("label", f"expected key=value, got {pair!r}")
            labels.append((key, value))
        name, _, version = (model or "").partition(":")
        where = DeviceFilter(
            labels=tuple(labels),
            profile=profile,
            is_online=online,
            model=name or None,
            model_version=version or None,
        )
        return devices.list(where, page)

    @get("/{device_id:str}", opt=_DEVICE_READ, responses=error_responses(401, 403, 404, 429))
    async def get_device(
        self,
        device_id: FromPath[str],
        request: DeviceOrOperatorRequest,
        devices: NamedDependency[DeviceService],
    ) -> DeviceInfo:
        """A device: labels, profile, online, last seen, active models. A device may read only itself."""
        return devices.get(request.user, device_id)

    @patch(
        "/{device_id:str}/labels",
        opt=requires(Role.OPERATOR),
        responses=error_responses(400, 401, 403, 404, 413, 422, 429),
    )
    async def update_device_labels(
        self,
        device_id: FromPath[str],
        data: JSONBody[UpdateLabelsRequest],
        request: AuthedRequest,
        devices: NamedDependency[DeviceService],
    ) -> DeviceInfo:
        """Merge-patch the labels: `{"labels": {"site": "b", "old": null}}` sets `site`, removes `old`."""
        return devices.patch_labels(request.user.actor, device_id, data)

    @get("/{device_id:str}/desired", opt=_DEVICE_READ, responses=error_responses(401, 403, 404, 429))
    async def get_desired_state(
        self,
        device_id: FromPath[str],
        request: DeviceOrOperatorRequest,
        devices: NamedDependency[DeviceService],
    ) -> DesiredState:
        """The last desired state written for the device (revision 0 before the first)."""
        return devices.desired(request.user, device_id)

    @put(
        "/{device_id:str}/desired",
        opt=requires(Role.OPERATOR),
        responses=error_responses(400, 401, 403, 404, 409, 413, 429, 503),
    )
    async def put_desired_state(
        self,
        device_id: FromPath[str],
        data: JSONBody[PutDesiredStateRequest],
        request: AuthedRequest,
        devices: NamedDependency[DeviceService],
    ) -> DesiredState:
        """Replace the device's desired models; answers the state written, with its new revision."""
        return await devices.put_desired(request.user.actor, device_id, data)

    @get("/{device_id:str}/reported", opt=_DEVICE_READ, responses=error_responses(401, 403, 404, 429))
    async def get_reported_state(
        self,
        device_id: FromPath[str],
        request: DeviceOrOperatorRequest,
        devices: NamedDependency[DeviceService],
    ) -> ReportedState:
        """The device's latest reported state (404 until it has reported)."""
        return devices.reported(request.user, device_id)

    @post(
        "/{device_id:str}/revoke",
        status_code=200,
        opt=requires(Role.OPERATOR),
        responses=error_responses(401, 403, 404, 413, 429, 503),
    )
    async def revoke_device(
        self, device_id: FromPath[str], request: AuthedRequest, devices: NamedDependency[DeviceService]
    ) -> DeviceInfo:
        """Cut the device off: its REST credential fails at once, its broker connection is dropped."""
        return await devices.revoke(request.user.actor, device_id)
