"""Store-and-forward: recorder -> queue -> JetStream telemetry stream, as `TelemetryBatch` messages.

Invariants:
- An item leaves the queue only after `Bus.publish_durable` returned, i.e. once the stream has
  persisted the batch carrying it.
- A batch's `batch_id`, also its `msg_id`, is the sha256 of its sorted record ids: the same records
  always travel under the same id, so a retry within the stream's duplicate window is stored once.
- A batch whose publish failed is re-sent unchanged (same records, same `evicted_count`) before anything
  else, so records queued meanwhile cannot change its id. That batch lives in memory: after a restart the
  queue yields the same records first again unless higher-priority items arrived in between.
- A batch's `evicted_count` is the queue's unreported evictions when the batch was built; they count as
  reported in the same transaction that deletes the batch's items. Evictions therefore travel with the
  next batch that carries records. An item evicted while its batch was in flight is both delivered and
  counted as evicted.
- A queued payload that does not decode as a `TelemetryRecord` is dropped with a warning, so it cannot
  block the queue.
- One flush runs at a time. Queue calls, being blocking SQLite, run in a worker thread; the one exception
  is `run` saving the open intervals as it ends, which must also work while the task is cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.telemetry.errors import TelemetryStorageError
from edge_agent.telemetry.queue import Priority, PutOutcome, TelemetryQueue
from edge_agent.telemetry.recorder import TelemetryRecorder
from protocols import subjects
from protocols.codec import Decoder, encode
from protocols.errors import BusError, ProtocolError
from protocols.messages import TelemetryBatch, TelemetryRecord
from protocols.transports.bus import Bus

logger = logging.getLogger(__name__)

_queued_record_decoder: Decoder[TelemetryRecord] = Decoder("queued telemetry record", TelemetryRecord)


def batch_id_for(record_ids: Iterable[str]) -> str:
    """The id of a batch carrying exactly these records, whatever their order."""
    return hashlib.sha256("\n".join(sorted(record_ids)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one `flush` got the broker to persist."""

    sent_records: int
    sent_batches: int


@dataclass(frozen=True, slots=True)
class _OutgoingBatch:
    batch_id: str
    item_ids: tuple[int, ...]
    payload: bytes
    record_count: int
    evicted_count: int


class TelemetryForwarder:
    """Moves recorder output into the queue and queued records to the broker for one device."""

    def __init__(
        self,
        queue: TelemetryQueue,
        bus: Bus,
        device_id: str,
        *,
        batch_max_records: int = 200,
        batch_max_bytes: int = 512 * 1024,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._queue = queue
        self._bus = bus
        self._device_id = device_id
        self._channel = subjects.telemetry(device_id)  # validates the id
        self._batch_max_records = batch_max_records
        self._batch_max_bytes = batch_max_bytes  # keep well under the broker's max_payload (1 MiB)
        self._publish_timeout_s = publish_timeout_s
        self._outgoing: _OutgoingBatch | None = None
        self._flush_lock = asyncio.Lock()
        self._flush_requested = asyncio.Event()

    async def collect(self, recorder: TelemetryRecorder, *, force: bool = False) -> int:
        """Queue the recorder's closed intervals (every interval when `force`) at `AGGREGATE` priority.

        Returns how many records were stored (dropped ones are counted as evictions by the queue).
        """
        records = recorder.drain(force=force)
        return await asyncio.to_thread(self._enqueue, records) if records else 0

    async def flush(self) -> FlushResult:
        """Send queued records in queue order until the queue is empty or a publish fails.

        A retryable `BusError` ends the flush (logged at info) and leaves the unsent items queued; a
        non-retryable one is raised. A `TelemetryStorageError` from the queue is raised.
        """
        sent_records = sent_batches = 0
        async with self._flush_lock:
            while True:
                batch = self._outgoing or await asyncio.to_thread(self._next_batch)
                if batch is None:
                    break
                self._outgoing = batch
                try:
                    await self._bus.publish_durable(
                        self._channel, batch.payload, msg_id=batch.batch_id, timeout_s=self._publish_timeout_s
                    )
                except BusError as e:
                    if not e.retryable:
                        raise
                    logger.info("telemetry flush paused after %d batch(es); will retry: %s", sent_batches, e)
                    break
                await asyncio.to_thread(
                    self._queue.ack, batch.item_ids, evictions_reported=batch.evicted_count
                )
                self._outgoing = None
                sent_records += batch.record_count
                sent_batches += 1
        return FlushResult(sent_records=sent_records, sent_batches=sent_batches)

    def flush_now(self) -> None:
        """Make `run` collect and flush at once instead of at the next interval (call on the loop)."""
        self._flush_requested.set()

    async def run(self, recorder: TelemetryRecorder, stop: asyncio.Event, *, interval_s: float) -> None:
        """Collect and flush now, then every `interval_s` or on `flush_now()`, until `stop` is set.

        When the loop ends, by `stop` or by cancellation, the recorder's open intervals are queued (not
        sent), so the next start forwards them. Failures are logged and retried at the next tick.
        """
        try:
            while True:
                await self._collect_and_flush(recorder)
                if await self._wait_for_tick(stop, interval_s):
                    break
        finally:
            self._queue_open_intervals(recorder)

    async def _collect_and_flush(self, recorder: TelemetryRecorder) -> None:
        try:
            await self.collect(recorder)
            await self.flush()
        except (BusError, TelemetryStorageError) as e:
            logger.warning("telemetry forwarding failed; retrying next interval: %s", e)

    async def _wait_for_tick(self, stop: asyncio.Event, interval_s: float) -> bool:
        """Wait for the interval, a `flush_now()` or `stop`; True when stopping."""
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._flush_requested.wait())}
        try:
            await asyncio.wait(waits, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        self._flush_requested.clear()
        return stop.is_set()

    def _queue_open_intervals(self, recorder: TelemetryRecorder) -> None:
        """Synchronous on purpose: it runs as the task is cancelled, where an await could be cut short."""
        try:
            self._enqueue(recorder.drain(force=True))
        except TelemetryStorageError as e:
            logger.warning("telemetry of the open interval lost at shutdown: %s", e)

    def _enqueue(self, records: list[TelemetryRecord]) -> int:
        outcomes = [self._queue.put(encode(r), Priority.AGGREGATE, r.record_id) for r in records]
        return outcomes.count(PutOutcome.STORED)

    def _next_batch(self) -> _OutgoingBatch | None:
        """Build the next batch from the head of the queue, dropping undecodable items on the way."""
        while items := self._queue.peek_batch(self._batch_max_records, self._batch_max_bytes):
            records: list[TelemetryRecord] = []
            item_ids: list[int] = []
            unreadable: list[int] = []
            for item in items:
                try:
                    records.append(_queued_record_decoder.decode(item.payload))
                    item_ids.append(item.id)
                except ProtocolError as e:
                    logger.warning("dropping queued telemetry item %s: %s", item.record_id, e)
                    unreadable.append(item.id)
            if unreadable:
                self._queue.ack(unreadable)
            if records:
                evicted_count = self._queue.unreported_evictions()
                batch = TelemetryBatch(
                    device_id=self._device_id,
                    batch_id=batch_id_for(r.record_id for r in records),
                    records=tuple(records),
                    evicted_count=evicted_count,
                )
                return _OutgoingBatch(
                    batch_id=batch.batch_id,
                    item_ids=tuple(item_ids),
                    payload=encode(batch),
                    record_count=len(records),
                    evicted_count=evicted_count,
                )
        return None
