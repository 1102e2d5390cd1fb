"""Subjects and topics: exact spellings in both transports, and no id can widen a subscription."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import pytest

from protocols import subjects
from protocols.errors import InvalidIdentifierError, ProtocolError
from protocols.identifiers import CommandKind
from protocols.subjects import Channel, StateKey

SHA = "0123456789abcdef" * 4
UNSAFE_IDS = [
    "dev*",
    "*",
    "dev>",
    ">",
    "dev+1",
    "+",
    "dev#1",
    "#",
    "dev.1",
    "dev/1",
    "dev 1",
    "dev\t1",
    "dev\n1",
    " ",
    "",
]


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is exactly one token, a final `>` is one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    if wanted[-1] == ">" and len(tokens) >= len(wanted):
        wanted, tokens = wanted[:-1], tokens[: len(wanted) - 1]
    return len(wanted) == len(tokens) and all(w in ("*", t) for w, t in zip(wanted, tokens, strict=True))


@pytest.mark.parametrize(
    ("build", "args", "nats", "mqtt", "is_pattern"),
    [
        (subjects.telemetry, ("dev-1",), "fabric.v1.telemetry.dev-1", "fabric/v1/telemetry/dev-1", False),
        (subjects.telemetry, (), "fabric.v1.telemetry.*", "fabric/v1/telemetry/+", True),
        (subjects.heartbeat, ("dev-1",), "fabric.v1.heartbeat.dev-1", "fabric/v1/heartbeat/dev-1", False),
        (subjects.heartbeat, (), "fabric.v1.heartbeat.*", "fabric/v1/heartbeat/+", True),
        (
            subjects.command,
            ("dev-1", "rollback"),
            "fabric.v1.cmd.dev-1.rollback",
            "fabric/v1/cmd/dev-1/rollback",
            False,
        ),
        (subjects.commands_for, ("dev-1",), "fabric.v1.cmd.dev-1.*", "fabric/v1/cmd/dev-1/+", True),
        (
            subjects.command_replies,
            ("dev-1",),
            "fabric.v1.cmd-reply.dev-1",
            "fabric/v1/cmd-reply/dev-1",
            False,
        ),
        (subjects.command_replies, (), "fabric.v1.cmd-reply.*", "fabric/v1/cmd-reply/+", True),
    ],
)
def test_channel_is_spelled_exactly_in_both_transports(
    build: Callable[..., Channel], args: tuple[str, ...], nats: str, mqtt: str, is_pattern: bool
) -> None:
    assert build(*args) == Channel(nats=nats, mqtt=mqtt, is_pattern=is_pattern)


@pytest.mark.parametrize("kind", get_args(CommandKind))
def test_every_command_kind_has_its_own_subject_under_the_agents_subscription(kind: str) -> None:
    channel = subjects.command("dev-1", kind)  # type: ignore[arg-type]

    assert channel == Channel(nats=f"fabric.v1.cmd.dev-1.{kind}", mqtt=f"fabric/v1/cmd/dev-1/{kind}")
    assert nats_matches(subjects.commands_for("dev-1").nats, channel.nats)
    assert not nats_matches(subjects.commands_for("dev-2").nats, channel.nats)


def test_bucket_and_stream_names_are_stable() -> None:
    assert (subjects.TWIN_BUCKET, subjects.ARTIFACT_BUCKET, subjects.METADATA_BUCKET) == (
        "fabric_twins",
        "fabric_artifacts",
        "fabric_tuf",
    )
    assert subjects.TELEMETRY_STREAM == "FABRIC_TELEMETRY"


@pytest.mark.parametrize("kind", ["desired", "reported"])
def test_state_key_names_the_kv_key_and_the_retained_topic(kind: Any) -> None:
    key = StateKey("dev-1", kind)

    assert key.kv_key == f"dev.dev-1.{kind}"
    assert key.mqtt_topic == f"fabric/v1/dev/dev-1/{kind}"


@pytest.mark.parametrize(
    ("watch", "device_id", "expected"),
    [
        (subjects.state_watch_kv, "dev-1", "dev.dev-1.desired"),
        (subjects.state_watch_kv, None, "dev.*.desired"),
        (subjects.state_watch_mqtt, "dev-1", "fabric/v1/dev/dev-1/desired"),
        (subjects.state_watch_mqtt, None, "fabric/v1/dev/+/desired"),
    ],
)
def test_state_watch_filters_one_device_or_every_device(
    watch: Callable[[Any, str | None], str], device_id: str | None, expected: str
) -> None:
    assert watch("desired", device_id) == expected


BUILDERS = [
    pytest.param(subjects.telemetry, id="telemetry"),
    pytest.param(subjects.heartbeat, id="heartbeat"),
    pytest.param(lambda d: subjects.command(d, "rollback"), id="command"),
    pytest.param(subjects.commands_for, id="commands_for"),
    pytest.param(subjects.command_replies, id="command_replies"),
    pytest.param(lambda d: StateKey(d, "desired"), id="StateKey"),
    pytest.param(lambda d: subjects.state_watch_kv("desired", d), id="state_watch_kv"),
    pytest.param(lambda d: subjects.state_watch_mqtt("reported", d), id="state_watch_mqtt"),
]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("device_id", [i for i in UNSAFE_IDS if i])
def test_device_id_with_wildcard_separator_or_whitespace_cannot_build_a_subject(
    build: Callable[[str], object], device_id: str
) -> None:
    with pytest.raises(InvalidIdentifierError, match="device id") as raised:
        build(device_id)

    assert raised.value.value == device_id
    assert isinstance(raised.value, ProtocolError)


@pytest.mark.parametrize("build", BUILDERS)
def test_empty_device_id_cannot_build_a_subject(build: Callable[[str], object]) -> None:
    with pytest.raises(InvalidIdentifierError, match="device id"):
        build("")


@pytest.mark.parametrize("build", BUILDERS)
def test_device_id_with_a_trailing_newline_cannot_build_a_subject(build: Callable[[str], object]) -> None:
    with pytest.raises(InvalidIdentifierError):
        build("dev-1\n")


@pytest.mark.parametrize("kind", ["rollback.>", "*", "+", "#", "roll back", ""])
def test_command_kind_that_could_widen_a_subscription_cannot_build_a_subject(kind: Any) -> None:
    with pytest.raises(InvalidIdentifierError):
        subjects.command("dev-1", kind)


@pytest.mark.parametrize("kind", ["pending", "desired.>", "*", ""])
def test_state_key_of_an_unknown_twin_half_is_rejected(kind: Any) -> None:
    with pytest.raises(InvalidIdentifierError, match="state kind"):
        StateKey("dev-1", kind)


@pytest.mark.parametrize(
    "address",
    [
        subjects.telemetry("dev-1").nats,
        subjects.telemetry("dev-1").mqtt,
        subjects.heartbeat("dev-1").nats,
        subjects.heartbeat("dev-1").mqtt,
        subjects.command("dev-1", "diagnostics").nats,
        subjects.command("dev-1", "diagnostics").mqtt,
        subjects.commands_for("dev-1").nats,
        subjects.command_replies("dev-1").mqtt,
        StateKey("dev-1", "reported").mqtt_topic,
    ],
)
def test_device_of_reads_the_device_from_either_spelling(address: str) -> None:
    assert subjects.device_of(address) == "dev-1"


@pytest.mark.parametrize(
    "address",
    [
        subjects.telemetry().nats,
        subjects.telemetry().mqtt,
        subjects.command_replies().mqtt,
        "fabric.v1.telemetry.>",
        "fabric/v1/telemetry/#",
        "fabric.v1.telemetry",
        "fabric/v1",
        "fabric.v2.telemetry.dev-1",
        "other.v1.telemetry.dev-1",
        "fabric/v1/telemetry/dev.1",
        StateKey("dev-1", "desired").kv_key,
        "",
    ],
)
def test_device_of_rejects_an_address_that_names_no_single_device(address: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        subjects.device_of(address)


@pytest.mark.parametrize("kind", ["desired", "reported"])
def test_state_key_of_reads_back_the_kv_key_and_the_topic(kind: Any) -> None:
    key = StateKey("dev-1", kind)

    assert subjects.state_key_of(key.kv_key) == key
    assert subjects.state_key_of(key.mqtt_topic) == key


@pytest.mark.parametrize(
    "address",
    [
        "dev.dev-1",
        "dev.dev-1.desired.extra",
        "dev.dev-1.pending",
        "twin.dev-1.desired",
        "dev..desired",
        "dev.*.desired",
        "fabric/v1/dev/+/reported",
        "fabric/v1/dev/dev-1",
        "fabric/v1/telemetry/dev-1",
        "fabric/v2/dev/dev-1/desired",
        "garbage",
        "",
    ],
)
def test_state_key_of_rejects_anything_but_a_twin_address(address: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        subjects.state_key_of(address)


def test_artifact_object_name_is_the_prefixed_digest() -> None:
    assert subjects.artifact_object_name(SHA) == f"sha256-{SHA}"


@pytest.mark.parametrize(
    "sha256",
    [SHA.upper(), SHA[:-1], SHA + "0", "g" * 64, f"sha256-{SHA}", "../" + SHA[3:], SHA[:-1] + "\n", ""],
    ids=["uppercase", "63-chars", "65-chars", "non-hex", "prefixed", "path", "trailing-newline", "empty"],
)
def test_artifact_object_name_rejects_anything_but_64_lowercase_hex(sha256: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="sha256"):
        subjects.artifact_object_name(sha256)


def test_telemetry_stream_captures_every_devices_telemetry_but_no_commands() -> None:
    captured = subjects.telemetry_stream_subjects()

    for device_id in ("dev-1", "pi_42"):
        assert any(nats_matches(p, subjects.telemetry(device_id).nats) for p in captured)
        assert not any(nats_matches(p, subjects.command(device_id, "rollback").nats) for p in captured)
