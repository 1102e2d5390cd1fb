"""One mapping from exceptions to HTTP error responses: `{"error": code, "detail": ..., "fields"?: [...]}`.

- `ControlPlaneError` subclasses: their declared `status_code`, `code`, message and headers.
- Litestar's `ValidationException` (body, query or path does not match the schema): 400
  `invalid_request`, with one entry in `fields` per problem.
- Other Litestar `HTTPException`s (no such route, method not allowed, body over the limit): their
  status, with a code derived from it.
- `UnicodeDecodeError` (Litestar decodes multipart text fields as UTF-8 while parsing): 400.
- Anything else is a bug: logged with its traceback, answered 500 `internal_error` without details.

Invariant: every error response has this JSON shape and is documented in the OpenAPI schema through
`error_responses()`, so clients (and schema fuzzers) can rely on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from control_plane.errors import ControlPlaneError

logger = logging.getLogger(__name__)


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    message: str
    key: str | None = None
    source: str | None = None
    """Where the value came from: `body`, `query`, `path`, `header`."""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    error: str
    """Machine-readable code, e.g. `unauthenticated`, `forbidden`, `rate_limited`."""
    detail: str
    fields: list[FieldProblem] | None = None


_CODES_BY_STATUS = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_argument",
    429: "rate_limited",
    503: "unavailable",
}


def status_of(exc: BaseException) -> int:
    """The status the handlers below answer `exc` with."""
    if isinstance(exc, ControlPlaneError):
        return exc.status_code
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer."""
    return {
        status: ResponseSpec(data_container=ErrorBody, description=HTTPStatus(status).phrase)
        for status in statuses
    }


def _respond(status: int, body: ErrorBody, headers: Mapping[str, str] | None = None) -> Response[ErrorBody]:
    return Response(content=body, status_code=status, headers=dict(headers or {}))


def _control_plane_error(_: Request[Any, Any, Any], exc: ControlPlaneError) -> Response[ErrorBody]:
    return _respond(exc.status_code, ErrorBody(error=exc.code, detail=exc.message), exc.headers())


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    fields = [
        FieldProblem(message=str(p.get("message", "")), key=p.get("key"), source=p.get("source"))
        for p in problems
        if isinstance(p, dict)
    ]
    return _respond(400, ErrorBody(error="invalid_request", detail=exc.detail, fields=fields or None))


def _http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if status >= 500:
        logger.error("HTTP %s: %s", status, exc.detail)
    code = _CODES_BY_STATUS.get(status, "http_error" if status < 500 else "internal_error")
    return _respond(status, ErrorBody(error=code, detail=exc.detail), exc.headers)


def _undecodable_text(_: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[ErrorBody]:
    """A text field of the body (e.g. a multipart form field) that is not UTF-8: the client's fault."""
    return _respond(
        400, ErrorBody(error="invalid_request", detail=f"request text is not UTF-8: {exc.reason}")
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(500, ErrorBody(error="internal_error", detail="internal error; see the server log"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ControlPlaneError: _control_plane_error,
    ValidationException: _validation_error,
    HTTPException: _http_exception,
    UnicodeDecodeError: _undecodable_text,
    Exception: _unexpected,
}
