"""Every message that crosses a process boundary, one tagged `msgspec.Struct` each.

Invariants:
- Wire Structs are frozen and keyword-only, and tolerate unknown fields (forward compatible).
- Each top-level message carries a `kind` tag; a union of them has exactly one decoder, in
  `protocols.codec`.
- New fields get defaults; a field's type never changes; a breaking change is a new `v2` subject.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

from protocols.identifiers import (
    CommandKind,
    DeviceId,
    JobId,
    ModelName,
    NonNegative,
    Positive,
    ProfileName,
    Sha256Hex,
    UtcDatetime,
    Version,
)

ArtifactFormat = Literal["onnx", "openvino-ir", "tflite"]
RolloutMode = Literal["active", "shadow"]
Transport = Literal["nats", "mqtt"]
LifecycleState = Literal[
    "idle",
    "downloading",
    "verifying",
    "installing",
    "testing",
    "active",
    "failed",
    "rolled_back",
]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (every timestamp on the wire is)."""
    return datetime.now(UTC)


class WireStruct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of nested wire values: frozen, keyword-only, unknown fields ignored."""


class Message(WireStruct, tag_field="kind", frozen=True, kw_only=True):
    """Base of top-level messages: tagged by `kind`."""


# --- references ---------------------------------------------------------------------------------


class ArtifactRef(WireStruct, frozen=True, kw_only=True):
    """One compiled artifact of a release, for one hardware profile.

    Content-addressed: the object store name and the HTTP path derive from `sha256`.
    """

    hw_profile: ProfileName
    sha256: Sha256Hex
    size_bytes: Positive
    format: ArtifactFormat = "onnx"
    filename: str = "model.onnx"
    url: str | None = None


class ReleaseRef(WireStruct, frozen=True, kw_only=True):
    """A signed release: one TUF targets entry per artifact, `model_counter` monotonic per model."""

    model: ModelName
    version: Version
    model_counter: Positive
    artifacts: tuple[ArtifactRef, ...] = ()
    metadata_url: str | None = None

    def artifact_for(self, profile: str) -> ArtifactRef | None:
        """The artifact built for `profile`, if the release has one."""
        return next((a for a in self.artifacts if a.hw_profile == profile), None)


class ErrorReport(WireStruct, frozen=True, kw_only=True):
    """A typed error as reported by a device: stable `code`, human `message`."""

    code: str
    message: str
    retryable: bool = False


# --- device twin ---------------------------------------------------------------------------------


class ModelAssignment(WireStruct, frozen=True, kw_only=True):
    """What one model on a device should be: a release, served actively or in shadow."""

    model: ModelName
    release: ReleaseRef
    mode: RolloutMode = "active"
    rollout_id: str | None = None


class DesiredState(Message, tag="desired_state", frozen=True, kw_only=True):
    """Written by the control plane; the device converges to the latest one it sees.

    `revision` grows with every write for a device, so a device can ignore a stale copy.
    """

    device_id: DeviceId
    revision: NonNegative
    models: tuple[ModelAssignment, ...] = ()
    issued_at: UtcDatetime = msgspec.field(default_factory=utc_now)


class ModelStatus(WireStruct, frozen=True, kw_only=True):
    """One model's lifecycle on a device."""

    model: ModelName
    state: LifecycleState
    current_version: Version | None = None
    previous_version: Version | None = None
    target_version: Version | None = None
    shadow_version: Version | None = None
    last_error: ErrorReport | None = None


class ReportedState(Message, tag="reported_state", frozen=True, kw_only=True):
    """Written by the device after each reconciliation step."""

    device_id: DeviceId
    profile: ProfileName
    observed_revision: NonNegative = 0
    models: tuple[ModelStatus, ...] = ()
    agent_version: str = ""
    labels: dict[str, str] = {}
    reported_at: UtcDatetime = msgspec.field(default_factory=utc_now)


class Heartbeat(Message, tag="heartbeat", frozen=True, kw_only=True):
    """Fire-and-forget liveness; the control plane derives `online` from the last one."""

    device_id: DeviceId
    uptime_s: float = 0.0
    queue_depth: NonNegative = 0
    active_models: dict[str, str] = {}
    sent_at: UtcDatetime = msgspec.field(default_factory=utc_now)


# --- telemetry -----------------------------------------------------------------------------------


class TelemetryRecord(WireStruct, frozen=True, kw_only=True):
    """One model version's inference statistics for one minute on one device.

    `record_id` is unique per record, so ingest is idempotent on it.
    `latency_ms_buckets[i]` counts requests with latency <= `latency_ms_bounds[i]`
    (the last bucket is +inf); `output_histogram` counts top-1 classes or output bins.
    """

    record_id: str
    model: ModelName
    version: Version
    minute_start: UtcDatetime
    count: NonNegative
    error_count: NonNegative = 0
    latency_ms_bounds: tuple[float, ...] = ()
    latency_ms_buckets: tuple[NonNegative, ...] = ()
    latency_ms_sum: float = 0.0
    output_histogram: tuple[NonNegative, ...] = ()
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    mode: RolloutMode = "active"
    shadow_agreement: float | None = None


class TelemetryBatch(Message, tag="telemetry_batch", frozen=True, kw_only=True):
    """Records drained from a device's store-and-forward queue; `evicted_count` counts losses."""

    device_id: DeviceId
    batch_id: str
    records: tuple[TelemetryRecord, ...] = ()
    evicted_count: NonNegative = 0
    sent_at: UtcDatetime = msgspec.field(default_factory=utc_now)


# --- enrollment ----------------------------------------------------------------------------------


class EnrollmentRequest(Message, tag="enrollment_request", frozen=True, kw_only=True):
    """A device asks to join: single-use token + Ed25519 public key + proof of possession.

    `proof` is the base64 Ed25519 signature of `token` by the device key; `public_key` is the
    base64 of the raw 32-byte Ed25519 public key. `device_id` asks for an id (None: the control
    plane picks one); `transport` "mqtt" enrolls an MQTT-only device.
    """

    token: str
    public_key: str
    proof: str
    profile: ProfileName
    hostname: str = ""
    labels: dict[str, str] = {}
    agent_version: str = ""
    device_id: DeviceId | None = None
    transport: Transport = "nats"


class EnrollmentReply(Message, tag="enrollment_reply", frozen=True, kw_only=True):
    """What an enrolled device needs: its id, broker and REST credentials, the TUF root."""

    device_id: DeviceId
    nats_url: str | None = None
    mqtt_url: str | None = None
    http_url: str = ""
    broker_credentials: str = ""
    """NATS user JWT for the device key ("" when the broker needs none)."""
    rest_token: str = ""
    trusted_root: str = ""
    """The TUF root.json to trust ("" before the control plane has a release signer)."""
    mqtt_password: str = ""
    """Bearer JWT sent as the MQTT password ("" when the broker needs none)."""
    artifact_base_url: str = ""
    """HTTP base of TUF `metadata/` and artifact `objects/` (for MQTT-only devices)."""
    profile: ProfileName | None = None
    """The hardware profile the control plane recorded (an enrollment token may preset it)."""
    labels: dict[str, str] = {}


# --- commands ------------------------------------------------------------------------------------


class Command(Message, frozen=True, kw_only=True):
    """Base of imperative commands; `command_id` makes handling idempotent."""

    command_id: str
    issued_at: UtcDatetime = msgspec.field(default_factory=utc_now)

    @property
    def command_kind(self) -> CommandKind:
        """The subject token this command travels under."""
        return _COMMAND_KINDS[type(self)]


class JoinTraining(Command, tag="join_training", frozen=True, kw_only=True):
    """Start a Flower SuperNode for `job_id` against `superlink_address`."""

    job_id: JobId
    superlink_address: str
    node_config: dict[str, str] = {}


class LeaveTraining(Command, tag="leave_training", frozen=True, kw_only=True):
    """Stop the SuperNode of `job_id`."""

    job_id: JobId


class FlushTelemetry(Command, tag="flush_telemetry", frozen=True, kw_only=True):
    """Send everything queued now instead of at the next interval."""


class RollbackModel(Command, tag="rollback", frozen=True, kw_only=True):
    """Switch `model` back to its previous version."""

    model: ModelName


class CollectDiagnostics(Command, tag="diagnostics", frozen=True, kw_only=True):
    """Reply with a diagnostic snapshot (profiles, disk, queue, versions)."""


class CommandReply(Message, tag="command_reply", frozen=True, kw_only=True):
    """The outcome of one command."""

    command_id: str
    device_id: DeviceId
    is_ok: bool
    detail: dict[str, str] = {}
    error: ErrorReport | None = None


_COMMAND_KINDS: dict[type[Command], CommandKind] = {
    JoinTraining: "join_training",
    LeaveTraining: "leave_training",
    FlushTelemetry: "flush_telemetry",
    RollbackModel: "rollback",
    CollectDiagnostics: "diagnostics",
}
