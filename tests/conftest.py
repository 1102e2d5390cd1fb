"""Fixtures shared by every test layer: real brokers on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.broker import EmbeddedBroker
from tests.mosquitto import Mosquitto, find_mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A real nats-server with JetStream and MQTT, owned by this test."""
    with EmbeddedBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free loopback port (skipped where it is not installed)."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not installed (.ci/run installs the Debian package)")
    with Mosquitto(binary, tmp_path / "mosquitto") as running:
        yield running
