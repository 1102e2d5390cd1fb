"""What a device's broker credentials allow: plain functions from a device id to NATS permissions.

Everything a device may touch is named with its own id, built by `protocols.subjects` (whose ids
cannot contain wildcards), so one device's grants never match another device's subjects. The
JetStream API subjects are the ones the agent's code really uses (found by running the agent
against a broker enforcing these grants and reading the permission violations in its log).

NATS-protocol device (user JWT, nonce signed with the device key, `STANDARD` connections only):
- publish: its telemetry (captured by the telemetry stream), heartbeat and MQTT-style command
  replies; its own reported twin key `$KV.fabric_twins.dev.<id>.reported`; the JetStream API calls
  below. Replies to requests it received (commands) go out through `resp` (one reply per request,
  on the request's own reply subject), not through a publish grant.
- subscribe: its own commands and its per-device inbox `_INBOX_<id>.>` (JetStream acks, consumer
  deliveries, request replies); nothing else.
- JetStream API: stream info of the twin bucket and the two object buckets; consumer creation on
  the twin bucket only with its own desired key as the filter (the server refuses a body whose
  filter differs from the one in the subject); consumer creation, direct gets and message gets on
  the object buckets (TUF metadata and artifacts are public: trust comes from their signatures).

MQTT-only device (bearer user JWT as the MQTT password, `MQTT` connections only): the same
fabric subjects in their converted form (MQTT `fabric/v1/...` topics are authorized as the
subjects `fabric.v1....`), its retained reported twin topic, its desired twin topic, and the
`$MQTT.sub.>` delivery subjects nats-server uses internally for QoS1 subscriptions.
"""

from __future__ import annotations

from control_plane.broker_auth.claims import Permission, ResponsePermission
from protocols import subjects
from protocols.subjects import StateKey

JS_API = "$JS.API"
_OBJECT_STREAMS = tuple(f"OBJ_{bucket}" for bucket in (subjects.METADATA_BUCKET, subjects.ARTIFACT_BUCKET))
_TWIN_STREAM = f"KV_{subjects.TWIN_BUCKET}"
REPLY_TTL_NS = 60 * 1_000_000_000
"""How long a device may answer a command request after receiving it."""


def twin_subject(key: StateKey) -> str:
    """The JetStream subject behind a twin KV key."""
    return f"$KV.{subjects.TWIN_BUCKET}.{key.kv_key}"


def _twin_mqtt_subject(key: StateKey) -> str:
    """The subject nats-server authorizes an MQTT twin topic as."""
    return key.mqtt_topic.replace("/", ".")


def _mqtt_subject(channel: subjects.Channel) -> str:
    return channel.mqtt.replace("/", ".").replace("+", "*").replace("#", ">")


def device_nats_permissions(device_id: str) -> tuple[Permission, Permission, ResponsePermission]:
    """(publish, subscribe, response) grants of a NATS-protocol device."""
    desired, reported = StateKey(device_id, "desired"), StateKey(device_id, "reported")
    publish = Permission(
        allow=(
            subjects.telemetry(device_id).nats,
            subjects.heartbeat(device_id).nats,
            subjects.command_replies(device_id).nats,
            twin_subject(reported),
            f"{JS_API}.STREAM.NAMES",
            f"{JS_API}.STREAM.INFO.{_TWIN_STREAM}",
            f"{JS_API}.CONSUMER.CREATE.{_TWIN_STREAM}.*.{twin_subject(desired)}",
            *(f"{JS_API}.STREAM.INFO.{stream}" for stream in _OBJECT_STREAMS),
            *(f"{JS_API}.CONSUMER.CREATE.{stream}" for stream in _OBJECT_STREAMS),
            *(f"{JS_API}.DIRECT.GET.{stream}.>" for stream in _OBJECT_STREAMS),
            *(f"{JS_API}.STREAM.MSG.GET.{stream}" for stream in _OBJECT_STREAMS),
        )
    )
    subscribe = Permission(
        allow=(subjects.commands_for(device_id).nats, f"{subjects.device_inbox_prefix(device_id)}.>")
    )
    return publish, subscribe, ResponsePermission(max=1, ttl=REPLY_TTL_NS)


def device_mqtt_permissions(device_id: str) -> tuple[Permission, Permission]:
    """(publish, subscribe) grants of an MQTT-only device, as converted subjects."""
    publish = Permission(
        allow=(
            _mqtt_subject(subjects.telemetry(device_id)),
            _mqtt_subject(subjects.heartbeat(device_id)),
            _mqtt_subject(subjects.command_replies(device_id)),
            _twin_mqtt_subject(StateKey(device_id, "reported")),
        )
    )
    subscribe = Permission(
        allow=(
            _mqtt_subject(subjects.commands_for(device_id)),
            _twin_mqtt_subject(StateKey(device_id, "desired")),
            "$MQTT.sub.>",
        )
    )
    return publish, subscribe
