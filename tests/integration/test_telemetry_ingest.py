"""Telemetry ingest against a real nats-server and a real SQLite data dir: batches published as the
agent publishes them are stored exactly once, bad messages never block the stream, and a `kill -9`
of the control plane loses nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlite_utils import Database

from control_plane.app import Services, create_app
from control_plane.broker import EmbeddedBroker
from control_plane.clock import SystemClock
from control_plane.config import ControlPlaneConfig
from control_plane.server import open_data_dir
from control_plane.telemetry.ingest import CONSUMER_NAME, TelemetryIngest
from control_plane.telemetry.repositories import TelemetryRepository
from edge_agent.telemetry.forwarder import TelemetryForwarder
from edge_agent.telemetry.queue import TelemetryQueue
from edge_agent.telemetry.recorder import TelemetryRecorder
from protocols import codec, subjects
from protocols.messages import Heartbeat, TelemetryBatch, TelemetryRecord
from protocols.transports.nats_bus import NatsBus

pytestmark = pytest.mark.timeout(180)

MINUTE = datetime(2030, 1, 1, tzinfo=UTC)
WAIT_S = 30.0


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


def record(record_id: str, *, count: int = 1, minute: int = 0) -> TelemetryRecord:
    return TelemetryRecord(
        record_id=record_id,
        model="digits",
        version="1",
        minute_start=MINUTE + timedelta(minutes=minute),
        count=count,
        latency_ms_bounds=(1.0, 5.0),
        latency_ms_buckets=(count, count, count),
    )


async def publish(bus: NatsBus, batch: TelemetryBatch, *, subject_device: str | None = None) -> None:
    channel = subjects.telemetry(subject_device or batch.device_id)
    await bus.publish_durable(channel, codec.encode(batch), msg_id=batch.batch_id)


@dataclass
class Plane:
    """The ingest of one control plane: its bus, worker and a reader of its database."""

    bus: NatsBus
    ingest: TelemetryIngest
    db: Database

    @property
    def records(self) -> TelemetryRepository:
        return TelemetryRepository(self.db)

    def stored(self) -> dict[str, tuple[str, int]]:
        rows = self.db.execute("SELECT record_id, device_id, request_count FROM telemetry_records").fetchall()
        return {record_id: (device_id, count) for record_id, device_id, count in rows}

    async def settled(self) -> bool:
        """Every message in the stream was delivered to the ingest and settled."""
        info = await self.bus.js.consumer_info(subjects.TELEMETRY_STREAM, CONSUMER_NAME)
        return info.num_pending == 0 and info.num_ack_pending == 0


@pytest.fixture
async def plane(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Plane]:
    config = ControlPlaneConfig(data_dir=str(tmp_path / "data"))
    db = open_data_dir(config)
    bus = NatsBus(broker.nats_url, name="test-control-plane", reconnect_wait_s=0.1)
    await bus.connect()
    await bus.provision()
    ingest = TelemetryIngest(bus, config.database_path, fetch_timeout_s=0.2)
    await ingest.start()
    try:
        yield Plane(bus, ingest, db)
    finally:
        await ingest.stop()
        await bus.close()
        db.close()


async def test_records_forwarded_by_the_agent_are_stored_once_each(plane: Plane, tmp_path: Path) -> None:
    now = [MINUTE.timestamp()]
    recorder = TelemetryRecorder(clock=lambda: now[0], interval_s=60.0)
    for second in range(0, 180, 3):  # three minutes, 20 requests each, one error per minute
        now[0] = MINUTE.timestamp() + second
        recorder.record("digits", "1", latency_ms=float(second % 7), is_error=second % 60 == 0)
    with TelemetryQueue(tmp_path / "agent-queue.db", max_bytes=4 * 1024 * 1024) as agent_queue:
        forwarder = TelemetryForwarder(agent_queue, plane.bus, "dev-7", batch_max_records=2)
        assert await forwarder.collect(recorder, force=True) == 3
        assert (await forwarder.flush()).sent_batches == 2

    await eventually(plane.settled, "the ingest settles both batches")
    stored = plane.stored()
    assert len(stored) == 3 and {device for device, _ in stored.values()} == {"dev-7"}
    assert sum(count for _, count in stored.values()) == 60
    assert plane.ingest.metrics.records_ingested == 3


async def test_a_batch_resent_under_a_new_batch_id_stores_its_records_once(plane: Plane) -> None:
    first = TelemetryBatch(
        device_id="dev-1", batch_id="b-1", records=tuple(record(f"r{n}") for n in range(10))
    )
    again = TelemetryBatch(
        device_id="dev-1", batch_id="b-2", records=tuple(record(f"r{n}") for n in range(5, 15))
    )
    await publish(plane.bus, first)
    await eventually(plane.settled, "the first batch is settled")
    await publish(plane.bus, again)
    await eventually(plane.settled, "the second batch is settled")

    assert set(plane.stored()) == {f"r{n}" for n in range(15)}
    assert plane.ingest.metrics.records_ingested == 15
    assert plane.ingest.metrics.records_duplicate == 5


async def test_malformed_and_foreign_messages_are_refused_without_blocking_the_stream(plane: Plane) -> None:
    channel = subjects.telemetry("dev-1")
    await plane.bus.publish_durable(channel, b"{not json", msg_id="garbage")
    await plane.bus.publish_durable(channel, codec.encode(Heartbeat(device_id="dev-1")), msg_id="heartbeat")
    foreign = TelemetryBatch(device_id="dev-2", batch_id="b-foreign", records=(record("stolen"),))
    await publish(plane.bus, foreign, subject_device="dev-1")
    bad_histogram = TelemetryRecord(
        record_id="bad", model="digits", version="1", minute_start=MINUTE, count=1, latency_ms_bounds=(1.0,)
    )
    good = TelemetryBatch(device_id="dev-1", batch_id="b-good", records=(record("good"), bad_histogram))
    await publish(plane.bus, good)

    await eventually(plane.settled, "every message is settled (terminated or acked)")
    assert set(plane.stored()) == {"good"}
    assert plane.ingest.metrics.rejected == {"malformed": 2, "device_mismatch": 1, "invalid_record": 1}
    await publish(
        plane.bus, TelemetryBatch(device_id="dev-1", batch_id="b-after", records=(record("after"),))
    )
    await eventually(plane.settled, "a later batch is settled")
    assert set(plane.stored()) == {"good", "after"}


async def test_evictions_reported_by_a_batch_count_once_even_when_it_is_delivered_twice(plane: Plane) -> None:
    batch = TelemetryBatch(device_id="dev-3", batch_id="b-ev", records=(record("e1"),), evicted_count=7)
    channel = subjects.telemetry("dev-3")
    await plane.bus.publish_durable(channel, codec.encode(batch), msg_id="delivery-1")
    await plane.bus.publish_durable(channel, codec.encode(batch), msg_id="delivery-2")  # past the window
    await eventually(plane.settled, "both deliveries are settled")
    assert plane.records.evicted_counts(["dev-3"]) == {"dev-3": 7}
    assert plane.ingest.metrics.records_duplicate == 1


async def test_ingest_resumes_from_its_durable_position_after_a_restart(plane: Plane) -> None:
    await publish(plane.bus, TelemetryBatch(device_id="dev-1", batch_id="b-a", records=(record("a"),)))
    await eventually(plane.settled, "the first batch is settled")
    await plane.ingest.stop()
    await publish(plane.bus, TelemetryBatch(device_id="dev-1", batch_id="b-b", records=(record("b"),)))
    await plane.ingest.start()
    await eventually(plane.settled, "the batch sent while stopped is settled")
    assert set(plane.stored()) == {"a", "b"}
    assert plane.ingest.metrics.records_duplicate == 0


async def test_ingest_carries_on_after_the_broker_restarts(plane: Plane, broker: EmbeddedBroker) -> None:
    await publish(plane.bus, TelemetryBatch(device_id="dev-1", batch_id="b-1", records=(record("before"),)))
    await eventually(plane.settled, "the first batch is settled")
    await asyncio.to_thread(broker.restart)
    await plane.bus.wait_connected(WAIT_S)
    await publish(plane.bus, TelemetryBatch(device_id="dev-1", batch_id="b-2", records=(record("after"),)))
    await eventually(lambda: asyncio.to_thread(lambda: "after" in plane.stored()), "the ingest resumes")
    assert set(plane.stored()) == {"before", "after"}


def test_the_app_ingests_over_its_own_broker_connection_and_exports_ingest_metrics(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    config = ControlPlaneConfig(data_dir=str(tmp_path / "data"), nats_url=broker.nats_url)
    db = open_data_dir(config)
    services = Services.build(config, db, SystemClock(), bus=NatsBus(broker.nats_url, name="control-plane"))
    (ingest,) = [w for w in services.workers if isinstance(w, TelemetryIngest)]
    # Only the ingest runs: the other workers are other areas' (and their own tests').
    services = dataclasses.replace(services, workers=(ingest,))
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert admin is not None
    batch = TelemetryBatch(device_id="dev-9", batch_id="b-app", records=(record("x", count=3), record("y")))

    async def send() -> None:
        async with NatsBus(broker.nats_url, name="device") as device:
            await device.connect()
            await publish(device, batch)

    with TestClient(create_app(config, services)) as client:
        asyncio.run(send())
        deadline = time.monotonic() + WAIT_S
        while "edgefabric_telemetry_records_ingested_total 2" not in client.get("/metrics").text.splitlines():
            assert time.monotonic() < deadline, client.get("/metrics").text
            time.sleep(0.05)
        summary = client.get(
            "/api/v1/telemetry/summary",
            params={"since": "2030-01-01T00:00:00Z", "until": "2030-01-01T01:00:00Z"},
            headers={"Authorization": f"Bearer {admin.token}"},
        ).json()
    db.close()
    assert [(i["model"], i["devices"], i["count"]) for i in summary["items"]] == [("digits", 1, 4)]


# --- kill -9 of the control plane ----------------------------------------------------------------

KILL_RECORDS = 20_000
KILL_BATCH_RECORDS = 50
START_TIMEOUT_S = 60.0


class ControlPlaneProcess:
    """`edgefabric up` on an external broker (no embedded broker, no mDNS) until it prints "ready"."""

    def __init__(self, data_dir: Path, nats_url: str) -> None:
        self.args = [
            "edgefabric", "up", "--data-dir", str(data_dir), "--port", "0",
            "--nats-url", nats_url, "--no-advertise",
        ]  # fmt: skip
        self._log = (data_dir.parent / "control-plane.log").open("ab")
        self.process = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC_")},
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"control plane exited before ready (log: {self._log.name})")
            if line.startswith("api: "):
                self.api_url = line.removeprefix("api: ").strip()
            if line.startswith("ready"):
                return

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture
def control_planes() -> Iterator[list[ControlPlaneProcess]]:
    started: list[ControlPlaneProcess] = []
    yield started
    for plane in started:
        if plane.process.poll() is None:
            plane.process.kill()
            plane.process.wait()


def stored_rows(database: Path) -> tuple[int, int, int]:
    """(rows, distinct record ids, sum of request counts) as another process sees them."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as reader:
        try:
            row = reader.execute(
                "SELECT COUNT(*), COUNT(DISTINCT record_id), COALESCE(SUM(request_count), 0) "
                "FROM telemetry_records"
            ).fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return 0, 0, 0
    return int(row[0]), int(row[1]), int(row[2])


async def test_kill_9_of_the_control_plane_during_ingest_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, tmp_path: Path, control_planes: list[ControlPlaneProcess]
) -> None:
    data_dir = tmp_path / "data"
    database = ControlPlaneConfig(data_dir=str(data_dir)).database_path
    control_planes.append(await asyncio.to_thread(ControlPlaneProcess, data_dir, broker.nats_url))
    batches = [
        TelemetryBatch(
            device_id=f"dev-{n % 20}",
            batch_id=f"kill-{n}",
            records=tuple(
                record(f"k{n}-{i}", count=1 + i % 3, minute=n % 60) for i in range(KILL_BATCH_RECORDS)
            ),
        )
        for n in range(KILL_RECORDS // KILL_BATCH_RECORDS)
    ]
    expected_requests = sum(r.count for b in batches for r in b.records)
    half = len(batches) // 2
    async with NatsBus(broker.nats_url, name="test-devices") as devices:
        await devices.connect()
        for batch in batches[:half]:
            await publish(devices, batch)
        await eventually(
            lambda: asyncio.to_thread(lambda: stored_rows(database)[0] > 0), "the control plane ingests"
        )
        # The rest is published while the first half is being ingested, and after the kill.
        publishing = asyncio.create_task(publish_all(devices, batches[half:]))
        await asyncio.to_thread(control_planes[0].kill)
        at_kill = await asyncio.to_thread(stored_rows, database)
        await publishing

        control_planes.append(await asyncio.to_thread(ControlPlaneProcess, data_dir, broker.nats_url))
        await eventually(
            lambda: asyncio.to_thread(lambda: stored_rows(database)[0] >= KILL_RECORDS),
            "the restarted control plane ingests the rest",
            timeout_s=90,
        )

        async def settled() -> bool:
            info = await devices.js.consumer_info(subjects.TELEMETRY_STREAM, CONSUMER_NAME)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(settled, "every message is acked")

    assert 0 < at_kill[0] < KILL_RECORDS
    assert stored_rows(database) == (KILL_RECORDS, KILL_RECORDS, expected_requests)
    # What an operator sees: the same exact count through the API and the CLI.
    token = (data_dir / "admin.token").read_text().strip()
    window = ["--since", MINUTE.isoformat(), "--until", (MINUTE + timedelta(hours=1)).isoformat()]
    cli = ["telemetry", "--url", control_planes[1].api_url, "--token", token, *window]
    (summary,) = json.loads(await asyncio.to_thread(edgefabric, *cli, "--json"))["items"]
    assert (summary["model"], summary["devices"], summary["count"]) == ("digits", 20, expected_requests)
    table = (await asyncio.to_thread(edgefabric, *cli)).splitlines()
    assert table[0].split()[:4] == ["MODEL", "VERSION", "DEVICES", "REQUESTS"]
    assert table[1].split()[:4] == ["digits", "1", "20", str(expected_requests)]
    control_planes[1].stop()


async def publish_all(bus: NatsBus, batches: list[TelemetryBatch]) -> None:
    for batch in batches:
        await publish(bus, batch)


def edgefabric(*argv: str) -> str:
    """The stdout of a successful `edgefabric` command."""
    return subprocess.run(
        ["edgefabric", *argv], capture_output=True, text=True, timeout=60, check=True
    ).stdout
