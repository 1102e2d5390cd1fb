"""`Bus` over MQTT 3.1.1 (paho-mqtt 2.x), for devices that only speak MQTT.

Works against nats-server's MQTT listener and against Mosquitto. Everything is QoS1; twin state is
a retained message per key; the session is persistent (`clean_session=False`, stable client id),
so QoS1 messages sent while a device is away are delivered when it returns.

paho runs its network loop in its own thread; every callback hops onto the asyncio loop with
`call_soon_threadsafe`, so all state below is touched from the event loop only.

Invariants:
- `subscribe` returns after the broker's SUBACK when connected; otherwise the filter is sent on
  the next connect. Filters are re-sent after a reconnect whenever the broker lost the session,
  and the bus counts as connected again only after their SUBACK (no message slips past).
- `publish_durable` / `put_state` return after PUBACK; messages published while disconnected are
  queued by paho and sent on reconnect (reconnect backoff `reconnect_min_s`..`reconnect_max_s`).
- Artifacts never travel over MQTT (nats-server caps payloads at 1 MB): devices use HTTP ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocols import subjects
from protocols.errors import BusConnectionError, BusError, BusTimeoutError
from protocols.identifiers import StateKind
from protocols.subjects import Channel, StateKey
from protocols.transports.bus import Bus, Delivery, StateUpdate, StateWatch, Subscription

logger = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes


class _Route:
    """One local subscriber of a topic filter."""

    def __init__(self, topic_filter: str) -> None:
        self.topic_filter = topic_filter
        self.queue: asyncio.Queue[_Received] = asyncio.Queue()


class MqttSubscription(Subscription):
    def __init__(self, bus: MqttBus, route: _Route) -> None:
        self._bus = bus
        self._route = route

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            received = await self._route.queue.get()
            yield Delivery(address=received.topic, payload=received.payload)

    async def close(self) -> None:
        await self._bus._remove_route(self._route)


class MqttStateWatch(StateWatch):
    def __init__(self, bus: MqttBus, route: _Route) -> None:
        self._bus = bus
        self._route = route

    async def __aiter__(self) -> AsyncIterator[StateUpdate]:
        while True:
            received = await self._route.queue.get()
            yield StateUpdate(
                key=subjects.state_key_of(received.topic),
                payload=received.payload or None,
            )

    async def close(self) -> None:
        await self._bus._remove_route(self._route)


class MqttBus(Bus):
    """A persistent-session MQTT 3.1.1 client."""

    transport = "mqtt"

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = False,
        keepalive_s: int = 30,
        connect_timeout_s: float = 5.0,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
            raise BusConnectionError(url, "expected mqtt://host:port")
        self.url = url
        self._host = parsed.hostname
        self._port = parsed.port or 1883
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect_thread
        self._client.on_disconnect = self._on_disconnect_thread
        self._client.on_message = self._on_message_thread
        self._client.on_publish = self._on_ack_thread
        self._client.on_subscribe = self._on_suback_thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._connect_failure: str | None = None
        self._routes: list[_Route] = []
        self._pending_acks: dict[int, asyncio.Future[None]] = {}
        self._early_acks: set[int] = set()
        self._resubscribing: asyncio.Future[None] | None = None
        self.session_present = False

    # --- paho thread -> event loop ---------------------------------------------------------------

    def _to_loop(self, callback: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(callback, *args)

    def _on_connect_thread(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._to_loop(self._on_connect, bool(flags.session_present), reason.is_failure, str(reason))

    def _on_disconnect_thread(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._to_loop(self._on_disconnect, str(reason))

    def _on_message_thread(self, client: Any, userdata: Any, message: Any) -> None:
        self._to_loop(self._dispatch, _Received(message.topic, bytes(message.payload)))

    def _on_ack_thread(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        self._to_loop(self._on_ack, mid)

    # --- event loop ------------------------------------------------------------------------------

    def _on_connect(self, session_present: bool, is_failure: bool, reason: str) -> None:
        if is_failure:
            self._connect_failure = reason
            logger.warning("MQTT connect to %s refused: %s", self.url, reason)
            return
        self._connect_failure = None
        self.session_present = session_present
        logger.info("MQTT connected to %s (session present: %s)", self.url, session_present)
        filters = sorted({route.topic_filter for route in self._routes})
        if session_present or not filters:
            self._connected.set()
            return
        rc, mid = self._client.subscribe([(topic_filter, QOS) for topic_filter in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return  # connection dropped again; the next CONNACK retries
        self._resubscribing = asyncio.ensure_future(self._ready_after_suback(mid, filters))

    async def _ready_after_suback(self, mid: int, filters: list[str]) -> None:
        """The broker lost our session: count as connected only once it has our filters again."""
        try:
            await self._wait_ack(mid, "re-subscribe (SUBACK)", ", ".join(filters), self._connect_timeout_s)
        except BusTimeoutError as e:
            logger.warning("%s; will retry on the next connect", e)
            return
        self._connected.set()

    def _on_disconnect(self, reason: str) -> None:
        if self._connected.is_set():
            logger.info("MQTT disconnected from %s: %s", self.url, reason)
        self._connected.clear()

    def _dispatch(self, received: _Received) -> None:
        for route in self._routes:
            if mqtt.topic_matches_sub(route.topic_filter, received.topic):
                route.queue.put_nowait(received)

    def _on_ack(self, mid: int) -> None:
        future = self._pending_acks.pop(mid, None)
        if future is None:
            self._early_acks.add(mid)
        elif not future.done():
            future.set_result(None)

    def _on_suback_thread(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        self._to_loop(self._on_ack, mid)

    async def _wait_ack(self, mid: int, operation: str, target: str, timeout_s: float) -> None:
        if mid in self._early_acks:
            self._early_acks.discard(mid)
            return
        future = asyncio.get_running_loop().create_future()
        self._pending_acks[mid] = future
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError as e:
            raise BusTimeoutError(operation, target, timeout_s) from e
        finally:
            self._pending_acks.pop(mid, None)

    # --- Bus ---------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive_s)
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout_s)
        except TimeoutError as e:
            self._client.loop_stop()
            reason = self._connect_failure or f"no CONNACK within {self._connect_timeout_s:g} s"
            raise BusConnectionError(self.url, reason) from e

    async def close(self) -> None:
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._connected.clear()
        self._loop = None

    async def _publish(self, topic: str, payload: bytes, *, retain: bool, timeout_s: float | None) -> None:
        try:
            info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        except ValueError as e:  # paho's check of topic and payload size
            raise BusError(f"cannot publish to {topic}: {e}") from e
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BusError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if timeout_s is not None:
            await self._wait_ack(info.mid, "publish (PUBACK)", topic, timeout_s)

    async def publish(self, channel: Channel, payload: bytes) -> None:
        _require_concrete(channel)
        await self._publish(channel.mqtt, payload, retain=False, timeout_s=None)

    async def publish_durable(
        self, channel: Channel, payload: bytes, *, msg_id: str, timeout_s: float = 5.0
    ) -> None:
        _require_concrete(channel)
        await self._publish(channel.mqtt, payload, retain=False, timeout_s=timeout_s)

    async def _add_route(self, topic_filter: str, timeout_s: float = 5.0) -> _Route:
        route = _Route(topic_filter)
        self._routes.append(route)
        if self.is_connected:
            rc, mid = self._client.subscribe(topic_filter, qos=QOS)
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                await self._wait_ack(mid, "subscribe (SUBACK)", topic_filter, timeout_s)
        return route

    async def _remove_route(self, route: _Route) -> None:
        if route in self._routes:
            self._routes.remove(route)
        if self.is_connected and all(r.topic_filter != route.topic_filter for r in self._routes):
            self._client.unsubscribe(route.topic_filter)

    async def subscribe(self, channel: Channel) -> MqttSubscription:
        return MqttSubscription(self, await self._add_route(channel.mqtt))

    async def put_state(self, key: StateKey, payload: bytes, *, timeout_s: float = 5.0) -> None:
        if not payload:
            raise BusError(f"empty payload for {key.mqtt_topic}: use delete_state() to remove a value")
        await self._publish(key.mqtt_topic, payload, retain=True, timeout_s=timeout_s)

    async def delete_state(self, key: StateKey, *, timeout_s: float = 5.0) -> None:
        await self._publish(key.mqtt_topic, b"", retain=True, timeout_s=timeout_s)

    async def watch_state(self, kind: StateKind, device_id: str | None = None) -> MqttStateWatch:
        return MqttStateWatch(self, await self._add_route(subjects.state_watch_mqtt(kind, device_id)))

    async def wait_connected(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError as e:
            raise BusConnectionError(self.url, f"not reconnected within {timeout_s:g} s") from e


def _require_concrete(channel: Channel) -> None:
    if channel.is_pattern:
        raise BusError(f"cannot publish to the pattern {channel.mqtt}")
