"""Writing desired state where devices read it, and hearing MQTT-only devices' reported state.

Every desired state goes to the KV bucket (`dev.<id>.desired`, what NATS devices watch). For an
MQTT-only device it is also published as a retained QoS1 message on `fabric/v1/dev/<id>/desired`:
nats-server turns only MQTT publishes with the retain flag into retained messages (a KV write or a
NATS publish never reaches a late MQTT subscriber), so the control plane keeps an MQTT client of
its own on the broker's MQTT listener. That client also watches the devices' retained reported
state, which MQTT-only devices publish over MQTT and never into the KV.

Invariants:
- `put_desired` returns only once every write it makes is persisted by the broker (KV put, PUBACK);
  any failure is an `UnavailableError` (503) and the caller stores nothing.
- The MQTT client connects in the background and retries with backoff; while it is away, a desired
  state for an MQTT-only device is a 503 and nothing else is affected. On the embedded broker it
  logs in with the broker authority's service bearer JWT (`MQTT_PASSWORD_TTL`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.clock import Clock
from control_plane.errors import UnavailableError
from control_plane.fleet.schemas import Transport
from control_plane.tasks import cancel_and_wait
from protocols.codec import encode
from protocols.errors import FabricError
from protocols.messages import DesiredState
from protocols.subjects import StateKey
from protocols.transports.mqtt_bus import MqttBus
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)

MQTT_CLIENT_ID = "edgefabric-control-plane"
MQTT_PASSWORD_TTL = timedelta(days=365)
"""Lifetime of the control plane's own MQTT bearer JWT (minted at each start, held in memory only)."""
_RETRY_MAX_S = 30.0


class TwinWriter:
    """The control plane's twin I/O; also a `BackgroundWorker` owning its MQTT client."""

    def __init__(
        self,
        bus: NatsBus | None,
        *,
        mqtt_url: str | None,
        broker: BrokerAuthority | None,
        clock: Clock,
        on_reported: Callable[[str, bytes], None],
        mqtt_connected_wait_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._mqtt_url = mqtt_url
        self._broker = broker
        self._clock = clock
        self._on_reported = on_reported
        self._mqtt_connected_wait_s = mqtt_connected_wait_s
        self._mqtt: MqttBus | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._mqtt_url is not None:
            password = (
                None
                if self._broker is None
                else self._broker.service_mqtt_password(expires_at=self._clock.now() + MQTT_PASSWORD_TTL)
            )
            self._mqtt = MqttBus(
                self._mqtt_url,
                client_id=MQTT_CLIENT_ID,
                clean_session=True,
                username=None if password is None else MQTT_CLIENT_ID,
                password=password,
            )
            self._task = asyncio.create_task(self._watch_reported(self._mqtt))

    async def stop(self) -> None:
        task, mqtt, self._task, self._mqtt = self._task, self._mqtt, None, None
        if task is not None:
            await cancel_and_wait(task)
        if mqtt is not None:
            await mqtt.close()

    async def put_desired(self, transport: Transport, desired: DesiredState) -> None:
        if self._bus is None:
            raise UnavailableError("broker", "this control plane runs without a broker")
        key = StateKey(desired.device_id, "desired")
        payload = encode(desired)
        try:
            await self._bus.put_state(key, payload)
            if transport == "mqtt":
                if self._mqtt is None:
                    raise UnavailableError("MQTT listener", "this control plane has no MQTT listener")
                await self._mqtt.wait_connected(self._mqtt_connected_wait_s)
                await self._mqtt.put_state(key, payload)
        except FabricError as e:
            raise UnavailableError("broker", str(e)) from e

    async def _watch_reported(self, mqtt: MqttBus) -> None:
        delay_s = 0.5
        while True:
            try:
                await mqtt.connect()
                break
            except FabricError as e:
                logger.warning("control plane MQTT client: %s; retrying in %.1f s", e, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
        async with await mqtt.watch_state("reported") as watch:
            async for update in watch:
                if update.payload is not None:
                    self._on_reported(update.key.device_id, update.payload)
