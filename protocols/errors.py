"""Root of every EdgeFabric error, and the errors of the wire contract.

Invariant: every exception a package raises on purpose derives from `FabricError`, carries its
facts as attributes, builds its own message, and says through `retryable` whether trying the same
call again can help. Third-party exceptions are wrapped (`raise ... from e`) only in adapters.
"""

from __future__ import annotations


class FabricError(Exception):
    """Root of all EdgeFabric errors."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProtocolError(FabricError):
    """A message on the wire could not be decoded or does not follow the contract."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"malformed {what}: {reason}")
        self.what = what
        self.reason = reason


class InvalidIdentifierError(ProtocolError):
    """An id (device, model, bucket key) could widen a subscription or break a subject."""

    def __init__(self, kind: str, value: str, reason: str) -> None:
        super().__init__(kind, f"{value!r} {reason}")
        self.kind = kind
        self.value = value


class BusError(FabricError):
    """A transport operation failed."""


class BusConnectionError(BusError):
    """The broker could not be reached or the connection was lost."""

    retryable = True

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach broker at {url}: {reason}")
        self.url = url
        self.reason = reason


class BusTimeoutError(BusError):
    """A request, ack or fetch did not complete in time."""

    retryable = True

    def __init__(self, operation: str, target: str, timeout_s: float) -> None:
        super().__init__(f"{operation} on {target} timed out after {timeout_s:g} s")
        self.operation = operation
        self.target = target
        self.timeout_s = timeout_s


class NoRespondersError(BusError):
    """A request found nobody listening on its subject."""

    retryable = True

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders on {subject}")
        self.subject = subject


class UnsupportedOperationError(BusError):
    """The transport cannot do this by design (e.g. artifacts over MQTT)."""

    def __init__(self, transport: str, operation: str, instead: str) -> None:
        super().__init__(f"{transport} does not support {operation}; {instead}")
        self.transport = transport
        self.operation = operation


class ObjectNotFoundError(BusError):
    """The object store has no object by that name."""

    def __init__(self, bucket: str, name: str) -> None:
        super().__init__(f"object {name!r} not found in bucket {bucket!r}")
        self.bucket = bucket
        self.name = name


class IntegrityError(BusError):
    """Downloaded bytes do not match the digest or size they were published with."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"object {name!r}: expected {expected}, got {actual}")
        self.name = name
        self.expected = expected
        self.actual = actual
