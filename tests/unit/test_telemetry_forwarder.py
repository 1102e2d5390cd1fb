"""The telemetry forwarder against an in-memory bus that deduplicates like a JetStream stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from edge_agent.telemetry.forwarder import FlushResult, TelemetryForwarder, batch_id_for
from edge_agent.telemetry.queue import Priority, TelemetryQueue
from edge_agent.telemetry.recorder import TelemetryRecorder
from protocols import codec, subjects
from protocols.errors import BusConnectionError, BusError, BusTimeoutError
from protocols.identifiers import StateKind
from protocols.messages import TelemetryBatch, TelemetryRecord
from protocols.subjects import Channel, StateKey
from protocols.transports.bus import Bus, StateWatch, Subscription

pytestmark = pytest.mark.timeout(30)

MINUTE = datetime(2025, 3, 4, 5, 6, tzinfo=UTC)


class StreamBus(Bus):
    """Keeps durable publishes like a stream with a duplicate window; can fail or lose acks on demand."""

    transport = "memory"

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes]] = []
        self.msg_ids: set[str] = set()
        self.failure: BusError | None = None
        self.acks_to_lose = 0

    def batches(self) -> list[TelemetryBatch]:
        decoded = [codec.device_event_decoder.decode(payload) for _, payload in self.stored]
        assert all(isinstance(b, TelemetryBatch) for b in decoded)
        return [b for b in decoded if isinstance(b, TelemetryBatch)]

    def record_ids(self) -> list[str]:
        return [r.record_id for b in self.batches() for r in b.records]

    async def publish_durable(
        self, channel: Channel, payload: bytes, *, msg_id: str, timeout_s: float = 5.0
    ) -> None:
        if self.failure is not None:
            raise self.failure
        if msg_id not in self.msg_ids:
            self.msg_ids.add(msg_id)
            self.stored.append((channel.nats, payload))
        if self.acks_to_lose:
            self.acks_to_lose -= 1
            raise BusTimeoutError("durable publish", channel.nats, timeout_s)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def is_connected(self) -> bool:
        return True

    async def wait_connected(self, timeout_s: float) -> None:
        pass

    async def publish(self, channel: Channel, payload: bytes) -> None:
        raise NotImplementedError

    async def subscribe(self, channel: Channel) -> Subscription:
        raise NotImplementedError

    async def put_state(self, key: StateKey, payload: bytes, *, timeout_s: float = 5.0) -> None:
        raise NotImplementedError

    async def delete_state(self, key: StateKey, *, timeout_s: float = 5.0) -> None:
        raise NotImplementedError

    async def watch_state(self, kind: StateKind, device_id: str | None = None) -> StateWatch:
        raise NotImplementedError


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` (state in SQLite and in the fake bus has no event to wait on)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


def record(record_id: str) -> TelemetryRecord:
    return TelemetryRecord(record_id=record_id, model="digits", version="1.0.0", minute_start=MINUTE, count=1)


def put_records(queue: TelemetryQueue, *record_ids: str, priority: Priority = Priority.AGGREGATE) -> None:
    for record_id in record_ids:
        queue.put(codec.encode(record(record_id)), priority, record_id)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TelemetryQueue]:
    with TelemetryQueue(tmp_path / "queue.db", max_bytes=1024 * 1024) as opened:
        yield opened


@pytest.fixture
def bus() -> StreamBus:
    return StreamBus()


@pytest.fixture
def forwarder(queue: TelemetryQueue, bus: StreamBus) -> TelemetryForwarder:
    return TelemetryForwarder(queue, bus, "dev-1", batch_max_records=2)


def test_batch_id_depends_only_on_the_set_of_record_ids() -> None:
    assert batch_id_for(["b", "a"]) == batch_id_for(["a", "b"])
    assert batch_id_for(["a", "b"]) != batch_id_for(["a", "b", "c"])


async def test_flush_sends_everything_in_queue_order_and_empties_the_queue(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    put_records(queue, "a1", "a2", "a3")
    put_records(queue, "e1", priority=Priority.EVENT)
    assert await forwarder.flush() == FlushResult(sent_records=4, sent_batches=2)
    assert [[r.record_id for r in b.records] for b in bus.batches()] == [["e1", "a1"], ["a2", "a3"]]
    assert {channel for channel, _ in bus.stored} == {subjects.telemetry("dev-1").nats}
    assert all(b.device_id == "dev-1" for b in bus.batches())
    assert all(b.batch_id == batch_id_for(r.record_id for r in b.records) for b in bus.batches())
    assert queue.stats().depth == 0
    assert await forwarder.flush() == FlushResult(sent_records=0, sent_batches=0)


async def test_unreachable_broker_leaves_everything_queued(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    put_records(queue, "a1", "a2", "a3")
    bus.failure = BusConnectionError("nats://127.0.0.1:1", "connection refused")
    assert await forwarder.flush() == FlushResult(sent_records=0, sent_batches=0)
    assert queue.stats().depth == 3
    bus.failure = None
    assert await forwarder.flush() == FlushResult(sent_records=3, sent_batches=2)
    assert sorted(bus.record_ids()) == ["a1", "a2", "a3"]


async def test_non_retryable_bus_error_is_raised_and_nothing_is_lost(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    put_records(queue, "a1")
    bus.failure = BusError("no JetStream stream captures fabric.v1.telemetry.dev-1")
    with pytest.raises(BusError, match="no JetStream stream"):
        await forwarder.flush()
    assert queue.stats().depth == 1


async def test_batch_with_a_lost_ack_is_resent_unchanged_even_after_new_records_arrive(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    put_records(queue, "a1")
    bus.acks_to_lose = 1
    assert await forwarder.flush() == FlushResult(sent_records=0, sent_batches=0)
    put_records(queue, "a2", "a3")  # would change the first batch's composition if it were rebuilt
    assert await forwarder.flush() == FlushResult(sent_records=3, sent_batches=2)
    assert sorted(bus.record_ids()) == ["a1", "a2", "a3"]  # each exactly once
    assert queue.stats().depth == 0


async def test_evictions_are_reported_once_with_the_next_batch(tmp_path: Path, bus: StreamBus) -> None:
    one_record = len(codec.encode(record("a00")))
    with TelemetryQueue(tmp_path / "queue.db", max_bytes=3 * one_record) as queue:
        forwarder = TelemetryForwarder(queue, bus, "dev-1", batch_max_records=2)
        put_records(queue, *(f"a{n:02}" for n in range(5)))  # a00 and a01 evicted
        await forwarder.flush()
        put_records(queue, *(f"b{n:02}" for n in range(4)))  # b00 evicted
        await forwarder.flush()
        assert queue.unreported_evictions() == 0
    assert [b.evicted_count for b in bus.batches()] == [2, 0, 1, 0]
    assert sorted(bus.record_ids()) == ["a02", "a03", "a04", "b01", "b02", "b03"]


async def test_undecodable_queued_item_is_dropped_without_blocking_the_rest(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    queue.put(b"not a record", Priority.EVENT, "garbage")
    put_records(queue, "a1")
    assert await forwarder.flush() == FlushResult(sent_records=1, sent_batches=1)
    assert bus.record_ids() == ["a1"]
    assert queue.stats().depth == 0


async def test_collect_queues_closed_intervals_only_unless_forced(
    forwarder: TelemetryForwarder, queue: TelemetryQueue
) -> None:
    now = [MINUTE.timestamp()]
    recorder = TelemetryRecorder(clock=lambda: now[0], interval_s=60)
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    now[0] += 60
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    assert await forwarder.collect(recorder) == 1
    assert await forwarder.collect(recorder, force=True) == 1
    items = queue.peek_batch(max_items=10, max_bytes=10**6)
    assert [i.priority for i in items] == [Priority.AGGREGATE] * 2
    assert [msgspec.json.decode(i.payload, type=TelemetryRecord).record_id for i in items] == [
        i.record_id for i in items
    ]


async def test_run_forwards_on_flush_now_and_queues_open_intervals_on_stop(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    recorder = TelemetryRecorder(interval_s=3600)
    put_records(queue, "backlog")
    stop = asyncio.Event()
    loop = asyncio.create_task(forwarder.run(recorder, stop, interval_s=3600))
    await eventually(lambda: bus.record_ids() == ["backlog"])  # sent at start
    put_records(queue, "command")
    forwarder.flush_now()
    await eventually(lambda: bus.record_ids() == ["backlog", "command"])

    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)  # interval still open
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert queue.stats().depth == 1
    assert len(bus.stored) == 2  # queued for the next start, not sent


async def test_run_survives_a_broker_outage(
    forwarder: TelemetryForwarder, queue: TelemetryQueue, bus: StreamBus
) -> None:
    put_records(queue, "a1")
    bus.failure = BusError("no JetStream stream captures fabric.v1.telemetry.dev-1")
    stop = asyncio.Event()
    loop = asyncio.create_task(forwarder.run(TelemetryRecorder(), stop, interval_s=0.01))
    await asyncio.sleep(0.1)
    assert not loop.done()
    bus.failure = None
    forwarder.flush_now()
    await eventually(lambda: queue.stats().depth == 0)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert bus.record_ids() == ["a1"]


async def test_cancelled_run_still_queues_the_open_interval(
    forwarder: TelemetryForwarder, queue: TelemetryQueue
) -> None:
    recorder = TelemetryRecorder(interval_s=3600)
    loop = asyncio.create_task(forwarder.run(recorder, asyncio.Event(), interval_s=3600))
    await asyncio.sleep(0.1)
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert queue.stats().depth == 1
