"""The wire contract: every message round-trips, unknown fields pass, malformed input is a ProtocolError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import msgspec
import pytest

from protocols import codec
from protocols.errors import ProtocolError
from protocols.identifiers import CommandKind
from protocols.messages import (
    ArtifactRef,
    CollectDiagnostics,
    CommandReply,
    DesiredState,
    EnrollmentReply,
    EnrollmentRequest,
    ErrorReport,
    FlushTelemetry,
    Heartbeat,
    JoinTraining,
    LeaveTraining,
    ModelAssignment,
    ModelStatus,
    ReleaseRef,
    ReportedState,
    RollbackModel,
    TelemetryBatch,
    TelemetryRecord,
)

AT = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
CPU_SHA = "0123456789abcdef" * 4
ARM_SHA = "f" * 64

CPU_ARTIFACT = ArtifactRef(
    hw_profile="cpu-x86_64", sha256=CPU_SHA, size_bytes=4096, url="https://cp.example/a/cpu"
)
ARM_ARTIFACT = ArtifactRef(
    hw_profile="tflite-arm", sha256=ARM_SHA, size_bytes=1024, format="tflite", filename="model.tflite"
)
RELEASE = ReleaseRef(
    model="resnet18",
    version="1.2.0+rc.1",
    model_counter=7,
    artifacts=(CPU_ARTIFACT, ARM_ARTIFACT),
    metadata_url="https://cp.example/tuf",
)
ERROR = ErrorReport(code="artifact_tampered", message="sha256 mismatch", retryable=True)

DESIRED = DesiredState(
    device_id="dev-1",
    revision=3,
    models=(ModelAssignment(model="resnet18", release=RELEASE, mode="shadow", rollout_id="r-9"),),
    issued_at=AT,
)
REPORTED = ReportedState(
    device_id="dev-1",
    profile="cpu-x86_64",
    observed_revision=3,
    models=(
        ModelStatus(
            model="resnet18",
            state="failed",
            current_version="1.1.0",
            target_version="1.2.0+rc.1",
            last_error=ERROR,
        ),
    ),
    agent_version="0.1.0",
    labels={"site": "lab"},
    reported_at=AT,
)
HEARTBEAT = Heartbeat(
    device_id="dev-1", uptime_s=12.5, queue_depth=2, active_models={"resnet18": "1.1.0"}, sent_at=AT
)
TELEMETRY = TelemetryBatch(
    device_id="dev-1",
    batch_id="b-1",
    records=(
        TelemetryRecord(
            record_id="rec-1",
            model="resnet18",
            version="1.1.0",
            minute_start=AT,
            count=10,
            error_count=1,
            latency_ms_bounds=(5.0, 10.0),
            latency_ms_buckets=(4, 5, 1),
            latency_ms_sum=71.5,
            output_histogram=(6, 4),
            input_mean=(0.5,),
            input_std=(0.25,),
            mode="shadow",
            shadow_agreement=0.9,
        ),
    ),
    evicted_count=1,
    sent_at=AT,
)
ENROLLMENT_REQUEST = EnrollmentRequest(
    token="tok", public_key="pk", proof="sig", profile="cpu-arm64", hostname="pi", labels={"a": "b"}
)
ENROLLMENT_REPLY = EnrollmentReply(
    device_id="dev-1", nats_url="nats://cp:4222", http_url="https://cp", rest_token="t", trusted_root="{}"
)
JOIN = JoinTraining(
    command_id="c-1", job_id="job-1", superlink_address="cp:9092", node_config={"k": "v"}, issued_at=AT
)
LEAVE = LeaveTraining(command_id="c-2", job_id="job-1", issued_at=AT)
FLUSH = FlushTelemetry(command_id="c-3", issued_at=AT)
ROLLBACK = RollbackModel(command_id="c-4", model="resnet18", issued_at=AT)
DIAGNOSTICS = CollectDiagnostics(command_id="c-5", issued_at=AT)
COMMAND_REPLY = CommandReply(
    command_id="c-4", device_id="dev-1", is_ok=False, detail={"model": "resnet18"}, error=ERROR
)

SAMPLES = [
    pytest.param(DESIRED, codec.desired_state_decoder, id="desired_state"),
    pytest.param(REPORTED, codec.reported_state_decoder, id="reported_state"),
    pytest.param(HEARTBEAT, codec.device_event_decoder, id="heartbeat"),
    pytest.param(TELEMETRY, codec.device_event_decoder, id="telemetry_batch"),
    pytest.param(ENROLLMENT_REQUEST, codec.enrollment_request_decoder, id="enrollment_request"),
    pytest.param(ENROLLMENT_REPLY, codec.enrollment_reply_decoder, id="enrollment_reply"),
    pytest.param(JOIN, codec.command_decoder, id="join_training"),
    pytest.param(LEAVE, codec.command_decoder, id="leave_training"),
    pytest.param(FLUSH, codec.command_decoder, id="flush_telemetry"),
    pytest.param(ROLLBACK, codec.command_decoder, id="rollback"),
    pytest.param(DIAGNOSTICS, codec.command_decoder, id="diagnostics"),
    pytest.param(COMMAND_REPLY, codec.command_reply_decoder, id="command_reply"),
]
DECODERS = [
    pytest.param(codec.desired_state_decoder, "desired state", id="desired_state"),
    pytest.param(codec.reported_state_decoder, "reported state", id="reported_state"),
    pytest.param(codec.device_event_decoder, "device event", id="device_event"),
    pytest.param(codec.command_decoder, "command", id="command"),
    pytest.param(codec.command_reply_decoder, "command reply", id="command_reply"),
    pytest.param(codec.enrollment_request_decoder, "enrollment request", id="enrollment_request"),
    pytest.param(codec.enrollment_reply_decoder, "enrollment reply", id="enrollment_reply"),
]
_DELETE = object()


def tag_of(message_type: type[msgspec.Struct]) -> Any:
    return message_type.__struct_config__.tag


def edited(message: msgspec.Struct, path: str, value: Any = _DELETE) -> bytes:
    """`message` encoded, with the value at dotted `path` (list indexes as numbers) replaced or deleted."""
    payload = json.loads(codec.encode(message))
    *parents, last = (int(key) if key.isdigit() else key for key in path.split("."))
    node = payload
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(("message", "decoder"), SAMPLES)
def test_every_message_survives_a_round_trip_through_its_decoder(
    message: msgspec.Struct, decoder: codec.Decoder[Any]
) -> None:
    wire = codec.encode(message)

    decoded = decoder.decode(wire)

    assert decoded == message
    assert type(decoded) is type(message)
    assert json.loads(wire)["kind"] == tag_of(type(message))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"kind": "heartbeat", "device_id": "dev-1"}, Heartbeat),
        ({"kind": "telemetry_batch", "device_id": "dev-1", "batch_id": "b-1"}, TelemetryBatch),
    ],
)
def test_device_event_decoder_returns_the_type_its_kind_names(
    payload: dict[str, str], expected: type[msgspec.Struct]
) -> None:
    assert type(codec.device_event_decoder.decode(json.dumps(payload))) is expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"kind": "join_training", "job_id": "job-1", "superlink_address": "cp:9092"}, JoinTraining),
        ({"kind": "leave_training", "job_id": "job-1"}, LeaveTraining),
        ({"kind": "flush_telemetry"}, FlushTelemetry),
        ({"kind": "rollback", "model": "resnet18"}, RollbackModel),
        ({"kind": "diagnostics"}, CollectDiagnostics),
    ],
)
def test_command_decoder_returns_the_command_its_kind_names(
    payload: dict[str, str], expected: type[msgspec.Struct]
) -> None:
    command = codec.command_decoder.decode(json.dumps({**payload, "command_id": "c-1"}))

    assert type(command) is expected
    assert command.command_kind == payload["kind"]


def test_every_command_kind_has_exactly_one_command_in_the_union() -> None:
    tags = sorted(tag_of(command_type) for command_type in get_args(codec.AnyCommand))

    assert tags == sorted(get_args(CommandKind))


@pytest.mark.parametrize(("message", "decoder"), SAMPLES)
def test_message_from_a_newer_sender_with_an_extra_field_still_decodes(
    message: msgspec.Struct, decoder: codec.Decoder[Any]
) -> None:
    assert decoder.decode(edited(message, "added_in_v1_1", {"nested": [1, 2]})) == message


@pytest.mark.parametrize(
    ("message", "decoder", "path"),
    [
        (DESIRED, codec.desired_state_decoder, "models.0.priority"),
        (DESIRED, codec.desired_state_decoder, "models.0.release.artifacts.0.signature"),
        (REPORTED, codec.reported_state_decoder, "models.0.last_error.trace_id"),
        (TELEMETRY, codec.device_event_decoder, "records.0.p99_ms"),
        (COMMAND_REPLY, codec.command_reply_decoder, "error.hint"),
    ],
)
def test_message_with_an_extra_nested_field_still_decodes(
    message: msgspec.Struct, decoder: codec.Decoder[Any], path: str
) -> None:
    assert decoder.decode(edited(message, path, "from the future")) == message


@pytest.mark.parametrize(("decoder", "what"), DECODERS)
@pytest.mark.parametrize(
    "data",
    [b"", b"{", b'{"kind": ', b"\xff\xfe", b"[]", b"[{}]", b'"desired_state"', b"42", b"null", b"{}"],
    ids=[
        "empty",
        "unclosed",
        "truncated",
        "not-utf8",
        "array",
        "array-of-object",
        "string",
        "number",
        "null",
        "empty-object",
    ],
)
def test_garbage_is_a_protocol_error_naming_what_was_decoded(
    decoder: codec.Decoder[Any], what: str, data: bytes
) -> None:
    with pytest.raises(ProtocolError, match=f"^malformed {what}: ") as raised:
        decoder.decode(data)

    assert raised.value.what == what


@pytest.mark.parametrize(
    ("message", "decoder", "path"),
    [
        (DESIRED, codec.desired_state_decoder, "device_id"),
        (DESIRED, codec.desired_state_decoder, "revision"),
        (DESIRED, codec.desired_state_decoder, "models.0.release.artifacts.0.sha256"),
        (REPORTED, codec.reported_state_decoder, "profile"),
        (REPORTED, codec.reported_state_decoder, "models.0.state"),
        (TELEMETRY, codec.device_event_decoder, "records.0.minute_start"),
        (JOIN, codec.command_decoder, "superlink_address"),
        (ROLLBACK, codec.command_decoder, "command_id"),
        (COMMAND_REPLY, codec.command_reply_decoder, "is_ok"),
        (ENROLLMENT_REQUEST, codec.enrollment_request_decoder, "proof"),
        (ENROLLMENT_REPLY, codec.enrollment_reply_decoder, "device_id"),
    ],
)
def test_message_missing_a_required_field_is_rejected_naming_the_field(
    message: msgspec.Struct, decoder: codec.Decoder[Any], path: str
) -> None:
    with pytest.raises(ProtocolError, match=f"^malformed {decoder.what}: .*{path.split('.')[-1]}"):
        decoder.decode(edited(message, path))


@pytest.mark.parametrize(
    ("message", "decoder", "path", "value"),
    [
        (DESIRED, codec.desired_state_decoder, "revision", "3"),
        (DESIRED, codec.desired_state_decoder, "revision", 3.5),
        (DESIRED, codec.desired_state_decoder, "models", {"resnet18": {}}),
        (DESIRED, codec.desired_state_decoder, "models.0.mode", "canary"),
        (DESIRED, codec.desired_state_decoder, "issued_at", "yesterday"),
        (REPORTED, codec.reported_state_decoder, "models.0.state", "exploded"),
        (REPORTED, codec.reported_state_decoder, "labels", {"site": 1}),
        (HEARTBEAT, codec.device_event_decoder, "uptime_s", "12"),
        (TELEMETRY, codec.device_event_decoder, "records.0.latency_ms_buckets", "4,5,1"),
        (ROLLBACK, codec.command_decoder, "model", None),
        (COMMAND_REPLY, codec.command_reply_decoder, "is_ok", "yes"),
        (ENROLLMENT_REQUEST, codec.enrollment_request_decoder, "token", 123),
    ],
)
def test_field_of_the_wrong_type_is_rejected_naming_the_field(
    message: msgspec.Struct, decoder: codec.Decoder[Any], path: str, value: Any
) -> None:
    with pytest.raises(ProtocolError, match=f"^malformed {decoder.what}: .*{path.split('.')[-1]}"):
        decoder.decode(edited(message, path, value))


@pytest.mark.parametrize(
    ("message", "decoder", "kind"),
    [
        (ROLLBACK, codec.command_decoder, "reboot"),
        (ROLLBACK, codec.command_decoder, "command_reply"),
        (HEARTBEAT, codec.device_event_decoder, "desired_state"),
        (HEARTBEAT, codec.device_event_decoder, "Heartbeat"),
        (HEARTBEAT, codec.device_event_decoder, None),
        (DESIRED, codec.desired_state_decoder, "reported_state"),
        (COMMAND_REPLY, codec.command_reply_decoder, "rollback"),
    ],
)
def test_message_with_a_kind_its_decoder_does_not_know_is_rejected(
    message: msgspec.Struct, decoder: codec.Decoder[Any], kind: str | None
) -> None:
    with pytest.raises(ProtocolError, match=f"^malformed {decoder.what}: .*kind"):
        decoder.decode(edited(message, "kind", kind))


@pytest.mark.parametrize(
    ("message", "decoder"),
    [
        (DESIRED, codec.desired_state_decoder),
        (REPORTED, codec.reported_state_decoder),
        (HEARTBEAT, codec.device_event_decoder),
        (TELEMETRY, codec.device_event_decoder),
        (ENROLLMENT_REPLY, codec.enrollment_reply_decoder),
        (COMMAND_REPLY, codec.command_reply_decoder),
    ],
)
@pytest.mark.parametrize(
    "device_id", ["dev*", "dev>", ">", "dev+1", "dev#1", "dev.1", "dev/1", "dev 1", "dev\n1", "-dev", ""]
)
def test_message_with_a_device_id_that_could_widen_a_subscription_is_rejected(
    message: msgspec.Struct, decoder: codec.Decoder[Any], device_id: str
) -> None:
    with pytest.raises(ProtocolError, match=f"^malformed {decoder.what}: .*device_id"):
        decoder.decode(edited(message, "device_id", device_id))


@pytest.mark.parametrize(
    ("message", "decoder", "path"),
    [
        (DESIRED, codec.desired_state_decoder, "models.0.model"),
        (DESIRED, codec.desired_state_decoder, "models.0.release.artifacts.0.hw_profile"),
        (REPORTED, codec.reported_state_decoder, "profile"),
        (TELEMETRY, codec.device_event_decoder, "records.0.model"),
        (JOIN, codec.command_decoder, "job_id"),
        (ROLLBACK, codec.command_decoder, "model"),
    ],
)
@pytest.mark.parametrize("bad", ["a.b", "a/b", "a*", "a>", "a+", "a#", "a b", ""])
def test_message_with_an_unsafe_name_or_id_is_rejected(
    message: msgspec.Struct, decoder: codec.Decoder[Any], path: str, bad: str
) -> None:
    with pytest.raises(ProtocolError, match=f"^malformed {decoder.what}: .*{path.split('.')[-1]}"):
        decoder.decode(edited(message, path, bad))


@pytest.mark.parametrize(
    "sha256",
    [CPU_SHA.upper(), CPU_SHA[:-1], CPU_SHA + "0", "g" * 64, f"sha256:{CPU_SHA}"[:64], " " + CPU_SHA[1:], ""],
    ids=["uppercase", "63-chars", "65-chars", "non-hex", "prefixed", "leading-space", "empty"],
)
def test_artifact_whose_sha256_is_not_64_lowercase_hex_is_rejected(sha256: str) -> None:
    wire = edited(DESIRED, "models.0.release.artifacts.0.sha256", sha256)

    with pytest.raises(ProtocolError, match=r"^malformed desired state: .*sha256"):
        codec.desired_state_decoder.decode(wire)


@pytest.mark.parametrize(
    ("message", "decoder", "path", "value"),
    [
        (DESIRED, codec.desired_state_decoder, "revision", -1),
        (DESIRED, codec.desired_state_decoder, "models.0.release.model_counter", 0),
        (DESIRED, codec.desired_state_decoder, "models.0.release.artifacts.0.size_bytes", 0),
        (REPORTED, codec.reported_state_decoder, "observed_revision", -1),
        (HEARTBEAT, codec.device_event_decoder, "queue_depth", -1),
        (TELEMETRY, codec.device_event_decoder, "evicted_count", -1),
        (TELEMETRY, codec.device_event_decoder, "records.0.count", -1),
        (TELEMETRY, codec.device_event_decoder, "records.0.error_count", -1),
        (TELEMETRY, codec.device_event_decoder, "records.0.latency_ms_buckets.1", -1),
        (TELEMETRY, codec.device_event_decoder, "records.0.output_histogram.0", -1),
    ],
)
def test_count_below_its_minimum_is_rejected(
    message: msgspec.Struct, decoder: codec.Decoder[Any], path: str, value: int
) -> None:
    field = next(key for key in reversed(path.split(".")) if not key.isdigit())

    with pytest.raises(ProtocolError, match=f"^malformed {decoder.what}: .*{field}"):
        decoder.decode(edited(message, path, value))


@pytest.mark.parametrize(
    ("release", "profile", "expected"),
    [
        (RELEASE, "cpu-x86_64", CPU_ARTIFACT),
        (RELEASE, "tflite-arm", ARM_ARTIFACT),
        (RELEASE, "nvidia-gpu", None),
        (RELEASE, "", None),
        (ReleaseRef(model="resnet18", version="1.0.0", model_counter=1), "cpu-x86_64", None),
    ],
)
def test_artifact_for_returns_the_artifact_built_for_the_profile_or_none(
    release: ReleaseRef, profile: str, expected: ArtifactRef | None
) -> None:
    assert release.artifact_for(profile) == expected


# --- regressions: defects found in review, now fixed -------------------------------------------------


@pytest.mark.parametrize("path", ["device_id", "models.0.model", "models.0.release.artifacts.0.sha256"])
def test_identifier_with_a_trailing_newline_is_rejected(path: str) -> None:
    value = json.loads(codec.encode(DESIRED))
    for key in (int(k) if k.isdigit() else k for k in path.split(".")):
        value = value[key]

    with pytest.raises(ProtocolError):
        codec.desired_state_decoder.decode(edited(DESIRED, path, f"{value}\n"))


def test_deeply_nested_unknown_field_is_a_protocol_error() -> None:
    depth = 5000
    wire = edited(HEARTBEAT, "padding", "SENTINEL").replace(b'"SENTINEL"', b"[" * depth + b"]" * depth)

    with pytest.raises(ProtocolError, match=r"^malformed device event: "):
        codec.device_event_decoder.decode(wire)


def test_timestamp_without_a_timezone_is_rejected() -> None:
    with pytest.raises(ProtocolError, match=r"^malformed device event: .*sent_at"):
        codec.device_event_decoder.decode(edited(HEARTBEAT, "sent_at", "2025-03-04T05:06:07"))
