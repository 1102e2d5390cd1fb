"""Who may call what: bearer-token authentication (middleware) and the role guard.

Routes declare access through `opt`: `PUBLIC` (no token needed) or `requires(role)`.

Invariants:
- A non-public route never runs without a valid token: a missing, malformed, unknown, expired or
  revoked token is a 401 before the route's guard or handler runs.
- Under the guard, a route without a declared role is admin-only (deny by default).
- A token of a lower role than required is a 403; the role order is `viewer < operator < admin`.
- A token sent to a public route is ignored (public routes never fail on credentials).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.openapi.spec import Reference, SecurityRequirement, SecurityScheme
from litestar.types import ASGIApp

from control_plane.auth.schemas import Identity
from control_plane.auth.services import TokenService
from control_plane.auth.tokens import Role
from control_plane.errors import AuthenticationError, PermissionDeniedError

PUBLIC_KEY = "exclude_from_auth"
ROLE_KEY = "min_role"
PUBLIC: dict[str, Any] = {PUBLIC_KEY: True}

SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "bearer": SecurityScheme(
        type="http", scheme="bearer", bearer_format="efp_<id>_<secret>", description="operator API token"
    )
}
BEARER: list[SecurityRequirement] = [{"bearer": []}]
"""OpenAPI `security` of every non-public route."""


def requires(role: Role) -> dict[str, Any]:
    """`opt` for a route (or controller) that needs at least `role`."""
    return {ROLE_KEY: role}


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Resolves `Authorization: Bearer efp_...` to an `Identity` in `request.user`."""

    def __init__(self, app: ASGIApp, *, tokens: TokenService, exclude: list[str]) -> None:
        super().__init__(app, exclude=exclude, exclude_from_auth_key=PUBLIC_KEY)
        self._tokens = tokens

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if header is None:
            raise AuthenticationError("missing 'Authorization: Bearer <token>' header")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError("expected 'Authorization: Bearer <token>'")
        identity = self._tokens.authenticate(credentials.strip())
        return AuthenticationResult(user=identity, auth=None)


def role_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if handler.opt.get(PUBLIC_KEY):
        return
    required = handler.opt.get(ROLE_KEY, Role.ADMIN)
    identity = connection.user
    if not isinstance(identity, Identity):  # unreachable behind BearerTokenMiddleware; fail closed
        raise AuthenticationError("not authenticated")
    if not identity.role.allows(required):
        raise PermissionDeniedError(required.value, identity.role.value)
