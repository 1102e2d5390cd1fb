"""The on-device telemetry queue: priorities, quota, eviction counting, persistence."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.telemetry.errors import TelemetryStorageError
from edge_agent.telemetry.queue import Priority, PutOutcome, TelemetryQueue


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TelemetryQueue]:
    with TelemetryQueue(tmp_path / "queue.db", max_bytes=100) as opened:
        yield opened


def ten(tag: str) -> bytes:
    return tag.encode().ljust(10, b".")


def queued_ids(queue: TelemetryQueue) -> list[str]:
    return [item.record_id for item in queue.peek_batch(max_items=1000, max_bytes=10**9)]


def test_items_come_out_by_priority_then_arrival(queue: TelemetryQueue) -> None:
    for record_id, priority in [
        ("s1", Priority.SAMPLE),
        ("a1", Priority.AGGREGATE),
        ("e1", Priority.EVENT),
        ("a2", Priority.AGGREGATE),
        ("s2", Priority.SAMPLE),
        ("e2", Priority.EVENT),
    ]:
        assert queue.put(ten(record_id), priority, record_id) is PutOutcome.STORED
    items = queue.peek_batch(max_items=10, max_bytes=1000)
    assert [i.record_id for i in items] == ["e1", "e2", "a1", "a2", "s1", "s2"]
    assert items[0].payload == ten("e1") and items[0].priority is Priority.EVENT


def test_peek_respects_item_and_byte_limits_but_always_returns_the_head(queue: TelemetryQueue) -> None:
    for n in range(5):
        queue.put(ten(f"a{n}"), Priority.AGGREGATE, f"a{n}")
    assert [i.record_id for i in queue.peek_batch(max_items=2, max_bytes=1000)] == ["a0", "a1"]
    assert [i.record_id for i in queue.peek_batch(max_items=10, max_bytes=35)] == ["a0", "a1", "a2"]
    assert [i.record_id for i in queue.peek_batch(max_items=10, max_bytes=1)] == ["a0"]
    assert queue.stats().depth == 5  # peeking removes nothing


def test_ack_removes_only_the_acknowledged_items(queue: TelemetryQueue) -> None:
    for n in range(3):
        queue.put(ten(f"a{n}"), Priority.AGGREGATE, f"a{n}")
    head = queue.peek_batch(max_items=2, max_bytes=1000)
    queue.ack([item.id for item in head])
    assert queued_ids(queue) == ["a2"]
    assert (queue.stats().depth, queue.stats().queued_bytes) == (1, 10)


def test_same_record_id_is_stored_once(queue: TelemetryQueue) -> None:
    assert queue.put(ten("a"), Priority.AGGREGATE, "rec-1") is PutOutcome.STORED
    assert queue.put(ten("a"), Priority.AGGREGATE, "rec-1") is PutOutcome.DUPLICATE
    assert queue.put(ten("b"), Priority.EVENT, "rec-1") is PutOutcome.DUPLICATE
    assert queued_ids(queue) == ["rec-1"]
    assert queue.stats().queued_bytes == 10


def test_full_queue_evicts_oldest_lowest_priority_first(queue: TelemetryQueue) -> None:
    queue.put(ten("e0"), Priority.EVENT, "e0")
    for n in range(4):
        queue.put(ten(f"a{n}"), Priority.AGGREGATE, f"a{n}")
    for n in range(5):
        queue.put(ten(f"s{n}"), Priority.SAMPLE, f"s{n}")
    assert queue.stats().queued_bytes == 100  # exactly full

    assert queue.put(ten("a4"), Priority.AGGREGATE, "a4") is PutOutcome.STORED
    assert queue.put(ten("e1").ljust(20, b"."), Priority.EVENT, "e1") is PutOutcome.STORED
    assert queued_ids(queue) == ["e0", "e1", "a0", "a1", "a2", "a3", "a4", "s3", "s4"]
    stats = queue.stats()
    assert stats.queued_bytes <= stats.max_bytes == 100
    assert stats.evicted == {Priority.SAMPLE: 3, Priority.AGGREGATE: 0, Priority.EVENT: 0}


def test_same_priority_makes_room_by_evicting_its_oldest(queue: TelemetryQueue) -> None:
    for n in range(12):
        assert queue.put(ten(f"a{n:02}"), Priority.AGGREGATE, f"a{n:02}") is PutOutcome.STORED
    assert queued_ids(queue) == [f"a{n:02}" for n in range(2, 12)]
    assert queue.evicted_count() == 2


def test_lower_priority_item_is_dropped_rather_than_evicting_higher_ones(queue: TelemetryQueue) -> None:
    for n in range(10):
        queue.put(ten(f"a{n}"), Priority.AGGREGATE, f"a{n}")
    assert queue.put(ten("s0"), Priority.SAMPLE, "s0") is PutOutcome.DROPPED
    assert queued_ids(queue) == [f"a{n}" for n in range(10)]
    assert queue.stats().evicted[Priority.SAMPLE] == 1
    assert queue.stats().evicted[Priority.AGGREGATE] == 0


def test_item_that_cannot_fit_evicts_nothing_and_is_dropped(queue: TelemetryQueue) -> None:
    for n in range(5):
        queue.put(ten(f"s{n}"), Priority.SAMPLE, f"s{n}")
    queue.put(ten("e0"), Priority.EVENT, "e0")
    assert queue.put(b"x" * 101, Priority.EVENT, "huge") is PutOutcome.DROPPED
    assert queued_ids(queue) == ["e0", "s0", "s1", "s2", "s3", "s4"]
    assert queue.stats().evicted[Priority.EVENT] == 1


def test_items_and_counters_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "queue.db"
    with TelemetryQueue(path, max_bytes=30) as queue:
        for n in range(4):
            queue.put(ten(f"a{n}"), Priority.AGGREGATE, f"a{n}")
        queue.put(ten("e0"), Priority.EVENT, "e0")
        head = queue.peek_batch(max_items=1, max_bytes=1000)
        queue.ack([item.id for item in head], evictions_reported=1)
    with TelemetryQueue(path, max_bytes=30) as reopened:
        assert queued_ids(reopened) == ["a2", "a3"]
        stats = reopened.stats()
        assert stats.evicted[Priority.AGGREGATE] == 2
        assert stats.unreported_evictions == 1
        assert reopened.put(ten("a3"), Priority.AGGREGATE, "a3") is PutOutcome.DUPLICATE


def test_unreported_evictions_drop_as_acks_report_them(queue: TelemetryQueue) -> None:
    for n in range(13):
        queue.put(ten(f"a{n:02}"), Priority.AGGREGATE, f"a{n:02}")
    assert queue.unreported_evictions() == 3
    queue.ack([], evictions_reported=2)
    assert queue.unreported_evictions() == 1
    assert queue.evicted_count() == 3  # the total is never reset


def test_acking_a_stale_id_never_deletes_a_newer_item(queue: TelemetryQueue) -> None:
    queue.put(ten("a0"), Priority.AGGREGATE, "a0")
    (stale,) = queue.peek_batch(max_items=1, max_bytes=1000)
    queue.put(b"x" * 100, Priority.AGGREGATE, "big")  # evicts a0
    queue.ack([stale.id])
    assert queued_ids(queue) == ["big"]


def test_concurrent_producers_keep_the_quota_and_lose_nothing_uncounted(tmp_path: Path) -> None:
    with TelemetryQueue(tmp_path / "queue.db", max_bytes=1000) as queue:

        def produce(worker: int) -> None:
            for n in range(100):
                queue.put(ten(f"{worker}-{n}"), Priority.AGGREGATE, f"{worker}-{n}")

        producers = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for producer in producers:
            producer.start()
        for producer in producers:
            producer.join(timeout=60)
        stats = queue.stats()
    assert stats.queued_bytes <= 1000
    assert stats.depth + stats.evicted[Priority.AGGREGATE] == 400


def test_unopenable_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "queue.db").mkdir()
    with pytest.raises(TelemetryStorageError, match="open"):
        TelemetryQueue(tmp_path / "queue.db", max_bytes=100)
