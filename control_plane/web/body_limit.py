"""Refuse a request body over its route's limit (413 `request_too_large`), before a handler sees it.

The limit is `max_upload_bytes` on routes that declare `UPLOAD_ROUTE` in their `opt` (model
uploads) and `max_body_bytes` on every other route.

Invariants:
- A declared `Content-Length` over the limit is refused before anything reads the body (or
  authenticates the caller).
- A body streamed without `Content-Length` (chunked), or longer than it declared, is cut off with
  the same error as soon as the bytes received pass the limit.
- Litestar's own `request_max_body_size` is set by `create_app` to the larger of the two limits: a
  backstop only, never the limit that applies.
"""

from __future__ import annotations

from typing import Any

from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from control_plane.errors import RequestTooLargeError

UPLOAD_KEY = "upload"
UPLOAD_ROUTE: dict[str, Any] = {UPLOAD_KEY: True}
"""`opt` of a route that accepts bodies up to `max_upload_bytes` (merge with `requires(...)`)."""


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self._max_body_bytes = max_body_bytes
        self._max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        is_upload = handler is not None and bool(handler.opt.get(UPLOAD_KEY))
        limit_bytes = self._max_upload_bytes if is_upload else self._max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit_bytes:
                raise RequestTooLargeError(limit_bytes)
        received_bytes = 0

        async def receive_within_limit() -> ReceiveMessage:
            nonlocal received_bytes
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > limit_bytes:
                    raise RequestTooLargeError(limit_bytes)
            return message

        await self.app(scope, receive_within_limit, send)
