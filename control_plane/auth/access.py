"""Who may call what: bearer-token authentication (middleware) and the role guard.

Routes declare access through `opt`: `PUBLIC` (no token needed) or `requires(role)`, optionally
merged with `DEVICE_ROUTE` (`{**requires(Role.VIEWER), **DEVICE_ROUTE}`) to admit device credentials.

Invariants:
- A non-public route never runs without a valid token: a missing, malformed, unknown, expired or
  revoked token is a 401 before the route's guard or handler runs.
- Under the guard, a route without a declared role is admin-only (deny by default).
- A token of a lower role than required is a 403; the role order is `viewer < operator < admin`.
- A token sent to a public route is ignored (public routes never fail on credentials).
- A device credential (`efd_...`, resolved by the `DeviceAuthenticator`) is admitted only on routes
  that declare `DEVICE_ROUTE`; everywhere else it is a 403. Such a route must itself restrict a
  device to its own objects (`DeviceIdentity.device_id`).
"""

from __future__ import annotations

from typing import Any, Protocol

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.openapi.spec import Reference, SecurityRequirement, SecurityScheme
from litestar.types import ASGIApp

from control_plane.auth.schemas import DeviceIdentity, Identity
from control_plane.auth.services import TokenService
from control_plane.auth.tokens import Role
from control_plane.errors import AuthenticationError, PermissionDeniedError

PUBLIC_KEY = "exclude_from_auth"
ROLE_KEY = "min_role"
DEVICE_KEY = "devices_allowed"
PUBLIC: dict[str, Any] = {PUBLIC_KEY: True}
DEVICE_ROUTE: dict[str, Any] = {DEVICE_KEY: True}
DEVICE_TOKEN_PREFIX = "efd_"

SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "bearer": SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="efp_<id>_<secret> | efd_<id>_<secret>",
        description="operator API token (efp_) or device credential (efd_)",
    )
}
BEARER: list[SecurityRequirement] = [{"bearer": []}]
"""OpenAPI `security` of every non-public route."""


def requires(role: Role) -> dict[str, Any]:
    """`opt` for a route (or controller) that needs at least `role`."""
    return {ROLE_KEY: role}


class DeviceAuthenticator(Protocol):
    def authenticate(self, presented: str) -> DeviceIdentity:
        """The device behind a presented `efd_...` credential; `AuthenticationError` if none."""
        ...


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Resolves `Authorization: Bearer efp_...` to an `Identity`, `efd_...` to a `DeviceIdentity`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenService,
        devices: DeviceAuthenticator | None,
        exclude: list[str],
    ) -> None:
        # Every method is authenticated: Litestar would skip OPTIONS and HEAD by default, and its
        # automatic OPTIONS handler would then reach the role guard without a user.
        super().__init__(app, exclude=exclude, exclude_from_auth_key=PUBLIC_KEY, exclude_http_methods=[])
        self._tokens = tokens
        self._devices = devices

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if header is None:
            raise AuthenticationError("missing 'Authorization: Bearer <token>' header")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError("expected 'Authorization: Bearer <token>'")
        presented = credentials.strip()
        if presented.startswith(DEVICE_TOKEN_PREFIX) and self._devices is not None:
            return AuthenticationResult(user=self._devices.authenticate(presented), auth=None)
        return AuthenticationResult(user=self._tokens.authenticate(presented), auth=None)


def role_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if handler.opt.get(PUBLIC_KEY):
        return
    required = handler.opt.get(ROLE_KEY, Role.ADMIN)
    identity = connection.scope.get("user")
    if isinstance(identity, DeviceIdentity):
        if not handler.opt.get(DEVICE_KEY):
            raise PermissionDeniedError(required.value, "device")
        return
    if not isinstance(identity, Identity):  # unreachable behind BearerTokenMiddleware; fail closed
        raise AuthenticationError("not authenticated")
    if not identity.role.allows(required):
        raise PermissionDeniedError(required.value, identity.role.value)
