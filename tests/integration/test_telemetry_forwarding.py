"""Store-and-forward against a real nats-server: records queued through an outage arrive exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from control_plane.broker import EmbeddedBroker
from edge_agent.telemetry.forwarder import FlushResult, TelemetryForwarder, batch_id_for
from edge_agent.telemetry.queue import Priority, TelemetryQueue
from protocols import codec, subjects
from protocols.errors import BusTimeoutError
from protocols.messages import TelemetryBatch, TelemetryRecord
from protocols.subjects import Channel
from protocols.transports.nats_bus import NatsBus

pytestmark = pytest.mark.timeout(90)

DEVICE = "dev-7"
MINUTE = datetime(2025, 3, 4, 5, 6, tzinfo=UTC)


class AckLosingNatsBus(NatsBus):
    """Publishes for real, then reports the next `acks_to_lose` PubAcks as timed out."""

    acks_to_lose = 0

    async def publish_durable(
        self, channel: Channel, payload: bytes, *, msg_id: str, timeout_s: float = 5.0
    ) -> None:
        await super().publish_durable(channel, payload, msg_id=msg_id, timeout_s=timeout_s)
        if self.acks_to_lose:
            self.acks_to_lose -= 1
            raise BusTimeoutError("durable publish", channel.nats, timeout_s)


@pytest.fixture
async def bus(broker: EmbeddedBroker) -> AsyncIterator[AckLosingNatsBus]:
    async with AckLosingNatsBus(broker.nats_url, reconnect_wait_s=0.1) as connected:
        await connected.provision()
        yield connected


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TelemetryQueue]:
    with TelemetryQueue(tmp_path / "agent" / "queue.db", max_bytes=4 * 1024 * 1024) as opened:
        yield opened


def forwarder_for(queue: TelemetryQueue, bus: NatsBus) -> TelemetryForwarder:
    return TelemetryForwarder(queue, bus, DEVICE, batch_max_records=50, publish_timeout_s=1.0)


def queue_records(queue: TelemetryQueue, count: int, prefix: str = "r") -> set[str]:
    record_ids = {f"{prefix}{n:04}" for n in range(count)}
    for record_id in sorted(record_ids):
        record = TelemetryRecord(
            record_id=record_id, model="digits", version="1.0.0", minute_start=MINUTE, count=1
        )
        queue.put(codec.encode(record), Priority.AGGREGATE, record_id)
    return record_ids


async def stream_batches(bus: NatsBus) -> list[TelemetryBatch]:
    """Every message of the telemetry stream, decoded, in stream order."""
    info = await bus.js.stream_info(subjects.TELEMETRY_STREAM)
    batches: list[TelemetryBatch] = []
    if info.state.messages == 0:  # an empty stream reports first_seq 0, which get_msg refuses
        return batches
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await bus.js.get_msg(subjects.TELEMETRY_STREAM, sequence)
        assert message.subject == subjects.telemetry(DEVICE).nats
        event = codec.device_event_decoder.decode(message.data or b"")
        assert isinstance(event, TelemetryBatch)
        batches.append(event)
    return batches


async def stream_record_ids(bus: NatsBus) -> Counter[str]:
    return Counter(record.record_id for batch in await stream_batches(bus) for record in batch.records)


async def test_records_queued_while_the_broker_is_down_arrive_exactly_once(
    bus: AckLosingNatsBus, broker: EmbeddedBroker, queue: TelemetryQueue
) -> None:
    forwarder = forwarder_for(queue, bus)
    await asyncio.to_thread(broker.stop)
    queued = queue_records(queue, 120)

    assert await forwarder.flush() == FlushResult(sent_records=0, sent_batches=0)
    assert queue.stats().depth == 120

    await asyncio.to_thread(broker.start)
    await bus.wait_connected(10)
    result = await asyncio.wait_for(forwarder.flush(), 30)

    assert result == FlushResult(sent_records=120, sent_batches=3)
    received = await stream_record_ids(bus)
    assert set(received) == queued
    assert max(received.values()) == 1
    assert queue.stats().depth == 0


async def test_flush_after_a_crash_between_publish_and_ack_stores_no_duplicates(
    bus: AckLosingNatsBus, queue: TelemetryQueue
) -> None:
    queued = queue_records(queue, 30)
    # The previous process published the head batch, then died before deleting it from the queue.
    head = queue.peek_batch(max_items=50, max_bytes=512 * 1024)
    records = tuple(msgspec.json.decode(item.payload, type=TelemetryRecord) for item in head)
    batch_id = batch_id_for(r.record_id for r in records)
    crashed = TelemetryBatch(device_id=DEVICE, batch_id=batch_id, records=records)
    await bus.publish_durable(subjects.telemetry(DEVICE), codec.encode(crashed), msg_id=batch_id)

    result = await forwarder_for(queue, bus).flush()

    assert result == FlushResult(sent_records=30, sent_batches=1)
    assert len(await stream_batches(bus)) == 1  # JetStream dropped the retry as a duplicate
    received = await stream_record_ids(bus)
    assert set(received) == queued and max(received.values()) == 1
    assert queue.stats().depth == 0


async def test_lost_ack_retry_stores_no_duplicates_even_when_records_arrived_meanwhile(
    bus: AckLosingNatsBus, queue: TelemetryQueue
) -> None:
    forwarder = forwarder_for(queue, bus)
    first = queue_records(queue, 10, prefix="a")
    bus.acks_to_lose = 1
    assert await forwarder.flush() == FlushResult(sent_records=0, sent_batches=0)
    later = queue_records(queue, 10, prefix="b")

    assert await forwarder.flush() == FlushResult(sent_records=20, sent_batches=2)

    received = await stream_record_ids(bus)
    assert set(received) == first | later and max(received.values()) == 1
    assert queue.stats().depth == 0


async def test_evictions_reach_the_stream_in_evicted_count(bus: AckLosingNatsBus, tmp_path: Path) -> None:
    one_record = len(
        codec.encode(
            TelemetryRecord(record_id="r0000", model="digits", version="1.0.0", minute_start=MINUTE, count=1)
        )
    )
    with TelemetryQueue(tmp_path / "queue.db", max_bytes=10 * one_record) as queue:
        forwarder = forwarder_for(queue, bus)
        queue_records(queue, 25, prefix="r")  # 15 evicted
        await forwarder.flush()
        queue_records(queue, 12, prefix="s")  # 2 more evicted
        await forwarder.flush()
        assert queue.evicted_count() == 17
        assert queue.unreported_evictions() == 0

    batches = await stream_batches(bus)
    assert [b.evicted_count for b in batches] == [15, 2]
    assert sum(len(b.records) for b in batches) == 20
