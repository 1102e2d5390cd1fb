"""What only the MQTT adapter promises: persistent sessions and retained twin state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocols import subjects
from protocols.subjects import StateKey
from protocols.transports.mqtt_bus import MqttBus


@pytest.fixture(params=["nats-server", "mosquitto"])
def mqtt_server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("broker" if request.param == "nats-server" else "mosquitto")


async def test_commands_sent_while_device_is_away_arrive_when_it_returns(mqtt_server: Any) -> None:
    channel = subjects.commands_for("dev-away")
    device = MqttBus(mqtt_server.mqtt_url, client_id="dev-away")
    await device.connect()
    await device.subscribe(channel)
    await device.close()

    async with MqttBus(mqtt_server.mqtt_url, client_id="operator") as operator:
        for n in range(5):
            command = subjects.command("dev-away", "flush_telemetry")
            await operator.publish_durable(command, b"%d" % n, msg_id=str(n))

    returning = MqttBus(mqtt_server.mqtt_url, client_id="dev-away")
    subscription = await returning.subscribe(channel)  # before connect: the session holds the filter
    await returning.connect()
    try:
        deliveries = aiter(subscription)
        received = [(await asyncio.wait_for(anext(deliveries), 10)).payload for _ in range(5)]
    finally:
        await returning.close()
    assert returning.session_present
    assert received == [b"0", b"1", b"2", b"3", b"4"]


async def test_desired_state_written_before_a_device_connects_is_retained_for_it(mqtt_server: Any) -> None:
    async with MqttBus(mqtt_server.mqtt_url, client_id="control-plane") as control_plane:
        await control_plane.put_state(StateKey("dev-new", "desired"), b'{"revision": 3}')
    async with (
        MqttBus(mqtt_server.mqtt_url, client_id="dev-new") as device,
        await device.watch_state("desired", "dev-new") as watch,
    ):
        update = await asyncio.wait_for(anext(aiter(watch)), 10)
    assert update.key == StateKey("dev-new", "desired")
    assert update.payload == b'{"revision": 3}'
