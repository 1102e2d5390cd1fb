"""The only place a NATS subject, KV key, bucket, stream or MQTT topic is spelled.

Every builder validates the ids it is given (`protocols.identifiers`), so no caller can build a
subject that matches more than it names. MQTT topics are the NATS subjects with `/` for `.`;
nats-server's MQTT listener maps one onto the other, so a device publishing telemetry on
`fabric/v1/telemetry/<id>` lands in the same JetStream stream as a NATS device.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import InvalidIdentifierError
from protocols.identifiers import CommandKind, StateKind, validate_device_id, validate_token

PREFIX = "fabric.v1"

TWIN_BUCKET = "fabric_twins"
ARTIFACT_BUCKET = "fabric_artifacts"
METADATA_BUCKET = "fabric_tuf"
TELEMETRY_STREAM = "FABRIC_TELEMETRY"


@dataclass(frozen=True, slots=True)
class Channel:
    """One logical address in both spellings; a transport picks its own.

    `is_pattern` channels may only be subscribed to, never published on.
    """

    nats: str
    mqtt: str
    is_pattern: bool = False


@dataclass(frozen=True, slots=True)
class StateKey:
    """The address of one device twin half (`desired` or `reported`)."""

    device_id: str
    kind: StateKind

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if self.kind not in ("desired", "reported"):
            raise InvalidIdentifierError("state kind", self.kind, "must be 'desired' or 'reported'")

    @property
    def kv_key(self) -> str:
        """Key in the `TWIN_BUCKET` KV bucket."""
        return f"dev.{self.device_id}.{self.kind}"

    @property
    def mqtt_topic(self) -> str:
        """Retained topic for MQTT-only devices."""
        return f"fabric/v1/dev/{self.device_id}/{self.kind}"


def _wild(token: str | None, kind: str) -> tuple[str, str]:
    """(NATS token, MQTT token) for one level: the validated id, or the single-level wildcard."""
    if token is None:
        return "*", "+"
    validated = validate_token(kind, token)
    return validated, validated


def _pattern(kind_token: str, device_id: str | None, *rest: str | None) -> Channel:
    levels = [_wild(device_id, "device id"), *(_wild(r, "subject token") for r in rest)]
    is_pattern = any(n == "*" for n, _ in levels)
    return Channel(
        nats=".".join((PREFIX, kind_token, *(n for n, _ in levels))),
        mqtt="/".join(("fabric", "v1", kind_token, *(m for _, m in levels))),
        is_pattern=is_pattern,
    )


def telemetry(device_id: str | None = None) -> Channel:
    """Telemetry batches from one device, or (None) from every device."""
    return _pattern("telemetry", device_id)


def heartbeat(device_id: str | None = None) -> Channel:
    """Heartbeats from one device, or (None) from every device."""
    return _pattern("heartbeat", device_id)


def command(device_id: str, kind: CommandKind) -> Channel:
    """Request subject of one command kind for one device."""
    return _pattern("cmd", validate_device_id(device_id), kind)


def commands_for(device_id: str) -> Channel:
    """Every command kind addressed to one device (what the agent subscribes to)."""
    return _pattern("cmd", validate_device_id(device_id), None)


def command_replies(device_id: str | None = None) -> Channel:
    """Command replies from MQTT-only devices (NATS devices answer on the request inbox)."""
    return _pattern("cmd-reply", device_id)


def telemetry_stream_subjects() -> list[str]:
    """Subjects captured by `TELEMETRY_STREAM` (MQTT publishes map onto them too)."""
    return [telemetry().nats]


def device_of(address: str) -> str:
    """The device id in a concrete subject or topic built here (either spelling).

    Raises `InvalidIdentifierError` for an address that is not per-device.
    """
    separator = "/" if "/" in address else "."
    tokens = address.split(separator)
    if tokens[:2] != ["fabric", "v1"] or len(tokens) < 4:
        raise InvalidIdentifierError("subject", address, "is not a per-device fabric.v1 address")
    return validate_device_id(tokens[3])


def state_key_of(address: str) -> StateKey:
    """Parse a KV key (`dev.<id>.<kind>`) or a twin topic (`fabric/v1/dev/<id>/<kind>`)."""
    tokens = address.split("/") if "/" in address else address.split(".")
    if tokens[:3] == ["fabric", "v1", "dev"]:
        tokens = tokens[2:]
    if len(tokens) != 3 or tokens[0] != "dev" or tokens[2] not in ("desired", "reported"):
        raise InvalidIdentifierError("state key", address, "is not dev.<id>.desired|reported")
    kind: StateKind = "desired" if tokens[2] == "desired" else "reported"
    return StateKey(tokens[1], kind)


def state_watch_kv(kind: StateKind, device_id: str | None) -> str:
    """KV key filter watching one device's twin half, or every device's."""
    return f"dev.{'*' if device_id is None else validate_device_id(device_id)}.{kind}"


def state_watch_mqtt(kind: StateKind, device_id: str | None) -> str:
    """MQTT topic filter watching one device's twin half, or every device's."""
    return f"fabric/v1/dev/{'+' if device_id is None else validate_device_id(device_id)}/{kind}"


def device_inbox_prefix(device_id: str) -> str:
    """The NATS inbox prefix of one device (`_INBOX_<id>`): its request replies, JetStream acks and
    consumer deliveries arrive under it, so its broker grants can exclude every other inbox."""
    return f"_INBOX_{validate_device_id(device_id)}"


def artifact_object_name(sha256: str) -> str:
    """Object Store name of a content-addressed artifact."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InvalidIdentifierError("sha256", sha256, "must be 64 lowercase hex digits")
    return f"sha256-{sha256}"
