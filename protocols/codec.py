"""Encoding and the one decoder per message union.

Invariant: every decode failure -- invalid JSON, a wrong type, an unknown `kind`, a bad id --
surfaces as `ProtocolError` naming what was being decoded; no msgspec or JSON exception escapes.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from protocols.errors import ProtocolError
from protocols.messages import (
    CollectDiagnostics,
    CommandReply,
    DesiredState,
    EnrollmentReply,
    EnrollmentRequest,
    FlushTelemetry,
    Heartbeat,
    JoinTraining,
    LeaveTraining,
    ReportedState,
    RollbackModel,
    TelemetryBatch,
)

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """Serialize a message to JSON bytes (the wire format on both transports)."""
    return _encoder.encode(message)


class Decoder(Generic[T]):
    """A msgspec JSON decoder for one type or union, built once, raising `ProtocolError`."""

    def __init__(self, what: str, type_: Any) -> None:
        self.what = what
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)

    def decode(self, data: bytes | bytearray | memoryview | str) -> T:
        """Decode `data` or raise `ProtocolError` saying why."""
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ProtocolError(self.what, str(e)) from e
        except RecursionError as e:  # absurdly nested JSON
            raise ProtocolError(self.what, "nesting too deep") from e


desired_state_decoder: Decoder[DesiredState] = Decoder("desired state", DesiredState)
reported_state_decoder: Decoder[ReportedState] = Decoder("reported state", ReportedState)
DeviceEvent = Heartbeat | TelemetryBatch
device_event_decoder: Decoder[DeviceEvent] = Decoder("device event", DeviceEvent)
AnyCommand = JoinTraining | LeaveTraining | FlushTelemetry | RollbackModel | CollectDiagnostics
command_decoder: Decoder[AnyCommand] = Decoder("command", AnyCommand)
command_reply_decoder: Decoder[CommandReply] = Decoder("command reply", CommandReply)
enrollment_request_decoder: Decoder[EnrollmentRequest] = Decoder("enrollment request", EnrollmentRequest)
enrollment_reply_decoder: Decoder[EnrollmentReply] = Decoder("enrollment reply", EnrollmentReply)
