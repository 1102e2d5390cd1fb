"""An MQTT-only agent: desired state as a retained MQTT message, artifacts over HTTP ranges,
against nats-server's MQTT listener and against Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.client import AgentClient
from model_compiler.sample_models import digits_mlp
from model_compiler.signing.repository import init_repository, sign_release
from protocols.codec import reported_state_decoder
from protocols.transports.mqtt_bus import MqttBus
from tests.fleet import AgentProcess, build_release, set_desired
from tests.http_repository import RepositoryServer


@pytest.fixture(params=["nats-server", "mosquitto"])
def mqtt_server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("broker" if request.param == "nats-server" else "mosquitto")


async def test_mqtt_only_agent_installs_over_http_and_reports_over_mqtt(
    tmp_path: Path, mqtt_server: Any
) -> None:
    sample = digits_mlp().save(tmp_path / "sample")
    build = build_release(sample, tmp_path / "build", "1", ("cpu-x86_64",))
    repo = tmp_path / "repo"
    init_repository(repo)
    counter = sign_release(repo, build, "digits", "1").targets[0].model_counter
    with RepositoryServer(repo) as http:
        agent = AgentProcess(
            tmp_path / "agent",
            "mqtt-dev",
            [
                "--mqtt-url",
                mqtt_server.mqtt_url,
                "--artifact-base-url",
                http.url,
                "--trusted-root",
                str(repo / "metadata" / "1.root.json"),
                "--profile",
                "cpu-x86_64",
            ],
        )
        agent.start()
        try:
            async with MqttBus(mqtt_server.mqtt_url, client_id="control-plane") as bus:
                await set_desired(bus, "mqtt-dev", 1, "digits", "1", counter)
                agent.wait_model("digits", lambda m: m["current_version"] == "1", what="installed over HTTP")
                async with await bus.watch_state("reported", "mqtt-dev") as watch:
                    updates = aiter(watch)
                    reported = None
                    for _ in range(20):
                        update = await asyncio.wait_for(anext(updates), 10)
                        assert update.payload is not None
                        reported = reported_state_decoder.decode(update.payload)
                        if any(m.current_version == "1" for m in reported.models):
                            break
            assert reported is not None and reported.device_id == "mqtt-dev"
            assert any(m.model == "digits" and m.current_version == "1" for m in reported.models)
            pixels = np.load(sample.validation_path)["pixels"][:1]
            assert AgentClient(agent.url).infer("digits", {"pixels": pixels}).model_version == "1"
            assert any(path.startswith("/objects/sha256-") for path, _ in http.requests)
        finally:
            agent.stop()
