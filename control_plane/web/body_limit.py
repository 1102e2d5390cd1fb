"""Refuse a request whose declared body is over the limit before anything reads it (or authenticates).

A body sent without `Content-Length` (chunked) is capped by Litestar's `request_max_body_size`, set
to the same limit by `create_app`; both answer 413 `request_too_large`.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send

from control_plane.errors import RequestTooLargeError


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self._max_body_bytes:
                raise RequestTooLargeError(self._max_body_bytes)
        await self.app(scope, receive, send)
