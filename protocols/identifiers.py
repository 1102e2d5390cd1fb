"""Identifier types shared by every message, with the rules that keep subjects narrow.

Invariant: an id that passes these checks contains none of `*`, `>`, `+`, `#`, `.`, `/` or
whitespace, so putting it into a NATS subject or an MQTT topic can never widen a subscription or
add a level. Decoding a message with a bad id fails in msgspec (a `ProtocolError`); building a
subject with one fails in `validate_device_id`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from protocols.errors import InvalidIdentifierError

_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"  # \Z: `$` would accept a trailing newline
_TOKEN_RE = re.compile(_TOKEN)

DeviceId = Annotated[str, msgspec.Meta(pattern=_TOKEN, description="device id: [A-Za-z0-9_-], 1-64")]
ModelName = Annotated[str, msgspec.Meta(pattern=_TOKEN, description="model name: [A-Za-z0-9_-], 1-64")]
ProfileName = Annotated[str, msgspec.Meta(pattern=_TOKEN, description="hardware profile name")]
JobId = Annotated[str, msgspec.Meta(pattern=_TOKEN, description="federated job id")]
Version = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}\Z", description="model version")
]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z", description="lowercase hex sha256")]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True, description="timezone-aware timestamp")]

CommandKind = Literal["join_training", "leave_training", "flush_telemetry", "rollback", "diagnostics"]
StateKind = Literal["desired", "reported"]


def validate_token(kind: str, value: str) -> str:
    """Return `value` if it is a safe subject token (see module invariant), else raise."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise InvalidIdentifierError(
            kind, str(value), "must be 1-64 characters of A-Z a-z 0-9 _ - starting with a letter or digit"
        )
    return value


def validate_device_id(device_id: str) -> str:
    """Return `device_id` if it cannot widen a subscription, else raise `InvalidIdentifierError`."""
    return validate_token("device id", device_id)
