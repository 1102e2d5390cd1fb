"""`OPTIONS` answered with every method of the route: `204` and an exact `Allow` header.

Litestar 2.25 builds its automatic OPTIONS handler for the first handler registered on a path, so
where a controller has `GET /` and `POST /`, its `Allow` header names only one of them. This
middleware answers OPTIONS itself from the application's route map, which knows every method.
"""

from __future__ import annotations

from litestar import Response
from litestar.enums import ScopeType
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import ASGIApp, Receive, Scope, Send


class OptionsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods = set(scope["litestar_app"].route_handler_method_map.get(scope["path_template"], {}))
        response: Response[None] = Response(
            content=None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(sorted(methods))}
        )
        await response.to_asgi_response(app=None, request=None)(scope, receive, send)  # type: ignore[arg-type]
