"""Unknown query parameters are a 400, like unknown body fields.

A typo in a filter (`?lables=site=a` for `?label=site=a`) would otherwise be ignored and the call
would act on everything; refusing it names the parameter instead. The parameters a route accepts are
the ones its OpenAPI operation declares, so the document and the check can never disagree.

Invariant: a request whose query names a parameter its operation does not declare never reaches the
handler; routes outside the OpenAPI document (the schema itself) are not checked.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from control_plane.errors import InvalidQueryError

_PATH_PARAMETER = re.compile(r"\{(\w+):[^}]+\}")


def _openapi_path(route_path: str) -> str:
    """`/models/{name:str}` (Litestar route) -> `/models/{name}` (OpenAPI path)."""
    return _PATH_PARAMETER.sub(r"{\1}", route_path)


class QueryParameterMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._allowed: dict[tuple[str, str], frozenset[str]] | None = None

    def _allowed_by_operation(self, litestar_app: Litestar) -> dict[tuple[str, str], frozenset[str]]:
        if self._allowed is None:
            allowed = {}
            for path, item in (litestar_app.openapi_schema.paths or {}).items():
                for method in ("get", "put", "post", "delete", "patch"):
                    operation = getattr(item, method, None)
                    if operation is None:
                        continue
                    names = {
                        p.name for p in operation.parameters or () if getattr(p, "param_in", None) == "query"
                    }
                    allowed[(method.upper(), path)] = frozenset(names)
            self._allowed = allowed
        return self._allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["query_string"]:
            allowed_by_operation = self._allowed_by_operation(scope["litestar_app"])
            allowed = allowed_by_operation.get((scope["method"], _openapi_path(scope["path_template"])))
            if allowed is not None:
                query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                unknown = sorted({name for name, _ in query} - allowed)
                if unknown:
                    raise InvalidQueryError(unknown, sorted(allowed))
        await self.app(scope, receive, send)
