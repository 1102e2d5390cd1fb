"""`/api/v1/rollouts`: create and control (operator), read status, decisions and devices (viewer).

Thin adapters over `RolloutService`; the engine that carries rollouts out runs beside the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from control_plane.auth.access import BEARER, requires
from control_plane.auth.schemas import Identity
from control_plane.auth.tokens import Role
from control_plane.pagination import PageRequest
from control_plane.rollouts.schemas import RolloutDevicePage, RolloutPage, RolloutSpec, RolloutStatus
from control_plane.rollouts.services import RolloutService
from control_plane.web.errors import error_responses

AuthedRequest = Request[Identity, Any, Any]
_OPERATOR = requires(Role.OPERATOR)
_CONTROL_ERRORS = error_responses(401, 403, 404, 409, 413, 429)


class RolloutController(Controller):
    path = "/rollouts"
    tags = ("rollouts",)
    opt = requires(Role.VIEWER)
    security = BEARER

    @post(
        "/",
        status_code=201,
        opt=requires(Role.OPERATOR),
        responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503),
    )
    async def create_rollout(
        self, data: JSONBody[RolloutSpec], request: AuthedRequest, rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        """Roll a release out in waves to the devices the selector matches now, judging gates per wave.

        A release that does not exist or a selector that matches no device it can serve is a 422;
        another live rollout of the model is a 409; without a broker, a 503.
        """
        return await rollouts.create(request.user.actor, data)

    @get("/", responses=error_responses(400, 401, 403, 429))
    async def list_rollouts(
        self,
        page: NamedDependency[PageRequest],
        rollouts: NamedDependency[RolloutService],
        model: Annotated[str | None, QueryParameter(description="only this model's rollouts")] = None,
    ) -> RolloutPage:
        """Rollouts, newest first, with their waves' progress."""
        return rollouts.list(model, page)

    @get("/{rollout_id:str}", responses=error_responses(401, 403, 404, 429))
    async def get_rollout(
        self, rollout_id: FromPath[str], rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        """A rollout's state, its waves with their latest gate numbers, and its decisions."""
        return rollouts.status(rollout_id)

    @get("/{rollout_id:str}/devices", responses=error_responses(400, 401, 403, 404, 429))
    async def list_rollout_devices(
        self,
        rollout_id: FromPath[str],
        page: NamedDependency[PageRequest],
        rollouts: NamedDependency[RolloutService],
    ) -> RolloutDevicePage:
        """The rollout's devices by wave, each with its state, previous version and the reason."""
        return rollouts.devices(rollout_id, page)

    @post("/{rollout_id:str}/pause", status_code=200, opt=_OPERATOR, responses=_CONTROL_ERRORS)
    async def pause_rollout(
        self, rollout_id: FromPath[str], request: AuthedRequest, rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        """Stop assigning devices and judging gates until resumed (a 409 unless running)."""
        return await rollouts.pause(request.user.actor, rollout_id)

    @post("/{rollout_id:str}/resume", status_code=200, opt=_OPERATOR, responses=_CONTROL_ERRORS)
    async def resume_rollout(
        self, rollout_id: FromPath[str], request: AuthedRequest, rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        return await rollouts.resume(request.user.actor, rollout_id)

    @post("/{rollout_id:str}/abort", status_code=200, opt=_OPERATOR, responses=_CONTROL_ERRORS)
    async def abort_rollout(
        self, rollout_id: FromPath[str], request: AuthedRequest, rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        """Stop for good; devices keep what they were assigned."""
        return await rollouts.abort(request.user.actor, rollout_id)

    @post("/{rollout_id:str}/rollback", status_code=200, opt=_OPERATOR, responses=_CONTROL_ERRORS)
    async def rollback_rollout(
        self, rollout_id: FromPath[str], request: AuthedRequest, rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        """Give every device the rollout touched its previous assignment back."""
        return await rollouts.rollback(request.user.actor, rollout_id)

    @post("/{rollout_id:str}/promote", status_code=200, opt=_OPERATOR, responses=_CONTROL_ERRORS)
    async def promote_rollout(
        self, rollout_id: FromPath[str], request: AuthedRequest, rollouts: NamedDependency[RolloutService]
    ) -> RolloutStatus:
        """Make a running or completed shadow rollout active on the devices it reached and beyond."""
        return await rollouts.promote(request.user.actor, rollout_id)
