"""`/api/v1/tokens` (admin) and `/api/v1/me` (any role): thin adapters over `TokenService`."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control_plane.auth.access import BEARER, requires
from control_plane.auth.schemas import CreatedToken, CreateTokenRequest, Identity, TokenInfo, TokenPage
from control_plane.auth.services import TokenService
from control_plane.auth.tokens import Role
from control_plane.pagination import PageRequest
from control_plane.web.errors import error_responses

AuthedRequest = Request[Identity, Any, Any]


class TokenController(Controller):
    path = "/tokens"
    tags = ("tokens",)
    opt = requires(Role.ADMIN)
    security = BEARER

    @post("/", status_code=201, responses=error_responses(400, 401, 403, 413, 422, 429))
    async def create_token(
        self,
        data: JSONBody[CreateTokenRequest],
        request: AuthedRequest,
        tokens: NamedDependency[TokenService],
    ) -> CreatedToken:
        """Issue a token. The response is the only place its secret ever appears."""
        return tokens.create(request.user.actor, data)

    @get("/", responses=error_responses(400, 401, 403, 429))
    async def list_tokens(
        self, page: NamedDependency[PageRequest], tokens: NamedDependency[TokenService]
    ) -> TokenPage:
        """All tokens, newest first (active, expired and revoked), without secrets or hashes."""
        return tokens.list(page)

    @get("/{token_id:str}", responses=error_responses(401, 403, 404, 429))
    async def get_token(self, token_id: FromPath[str], tokens: NamedDependency[TokenService]) -> TokenInfo:
        return tokens.get(token_id)

    @post("/{token_id:str}/revoke", status_code=200, responses=error_responses(401, 403, 404, 409, 413, 429))
    async def revoke_token(
        self, token_id: FromPath[str], request: AuthedRequest, tokens: NamedDependency[TokenService]
    ) -> TokenInfo:
        """Revoke a token at once (idempotent). The last active admin token cannot be revoked (409)."""
        return tokens.revoke(request.user.actor, token_id)


@get("/me", opt=requires(Role.VIEWER), security=BEARER, tags=["tokens"], responses=error_responses(401, 429))
async def who_am_i(request: AuthedRequest) -> Identity:
    """The identity behind the bearer token of this request."""
    return request.user
