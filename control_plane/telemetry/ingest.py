"""Telemetry ingest: the `FABRIC_TELEMETRY` stream -> SQLite, through a durable pull consumer.

A `BackgroundWorker` of the app (it runs only when the control plane has a broker connection). Each
round fetches up to `fetch_max_messages` messages, decodes and checks them, stores every record in ONE
transaction, and only then settles each message: ack when stored, term when it can never be stored.

Invariants:
- At least once in, exactly once stored: a message is acked only after the transaction holding its
  records has committed, and records are keyed on their record id (`INSERT OR IGNORE`), so a redelivery
  after a crash (`kill -9` between commit and ack) is counted as duplicates, never stored twice.
- No poison pill: a message that does not decode as a `TelemetryBatch`, or whose `device_id` is not
  the device of its subject, is logged, counted and terminated; it never blocks the messages behind
  it. A record whose latency histogram is inconsistent is dropped and counted; the rest of its batch
  is stored.
- A failed transaction stores nothing and acks nothing: the round's messages are nak'ed with
  `retry_delay_s` and come back.
- A message fetched by a process that then died comes back after `ack_wait_s`; on `stop`, every
  message fetched and not yet settled is nak'ed, so the next start gets it at once.
- Decoding and the database run in the storage thread, over the ingest's own connection (WAL: the
  API's connection keeps reading meanwhile), never on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
from sqlite_utils import Database

from control_plane.db import open_database
from control_plane.errors import DataDirError, UnavailableError
from control_plane.tasks import cancel_and_wait
from control_plane.telemetry.consumer import DurableConsumer, StreamMessage
from control_plane.telemetry.histograms import latency_histogram_problem
from control_plane.telemetry.repositories import TelemetryRepository
from protocols import subjects
from protocols.codec import device_event_decoder
from protocols.errors import BusError, InvalidIdentifierError, ProtocolError
from protocols.messages import TelemetryBatch
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)

CONSUMER_NAME = "control-plane-ingest"
RATE_WINDOW_S = 10.0
STORAGE_CACHE_KIB = 64 * 1024

RejectReason = Literal["malformed", "device_mismatch", "invalid_record"]
REJECT_REASONS: tuple[RejectReason, ...] = ("malformed", "device_mismatch", "invalid_record")


@dataclass(frozen=True, slots=True)
class Admitted:
    """A message to store: its batch, less the records that cannot be stored."""

    batch: TelemetryBatch
    invalid_records: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str


def admit(subject: str, payload: bytes) -> Admitted | Rejected:
    """Decide what one stream message is worth storing (no I/O)."""
    try:
        event = device_event_decoder.decode(payload)
    except ProtocolError as e:
        return Rejected("malformed", e.reason)
    if not isinstance(event, TelemetryBatch):
        return Rejected("malformed", f"a {type(event).__name__} is not a telemetry batch")
    try:
        sender = subjects.device_of(subject)
    except InvalidIdentifierError as e:
        return Rejected("device_mismatch", str(e))
    if event.device_id != sender:
        return Rejected("device_mismatch", f"batch of device {event.device_id!r} on {subject}")
    valid = tuple(
        r
        for r in event.records
        if latency_histogram_problem(r.latency_ms_bounds, r.latency_ms_buckets) is None
    )
    if len(valid) == len(event.records):
        return Admitted(event, 0)
    return Admitted(msgspec.structs.replace(event, records=valid), len(event.records) - len(valid))


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What one fetched round stored: a verdict per message, in fetch order."""

    verdicts: list[Admitted | Rejected]
    inserted: int
    duplicates: int


class IngestMetrics:
    """Counters and gauges of the ingest, rendered in the Prometheus text format."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.records_ingested = 0
        self.records_duplicate = 0
        self.rejected: dict[RejectReason, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.pending_messages = 0
        self.lag_s = 0.0
        self._stored: collections.deque[tuple[float, int]] = collections.deque()
        """(monotonic time, records stored) per round inside the last `RATE_WINDOW_S`."""

    def observe_round(self, outcome: RoundOutcome, *, pending_messages: int, lag_s: float) -> None:
        self.records_ingested += outcome.inserted
        self.records_duplicate += outcome.duplicates
        for verdict in outcome.verdicts:
            if isinstance(verdict, Rejected):
                self.rejected[verdict.reason] += 1
            elif verdict.invalid_records:
                self.rejected["invalid_record"] += verdict.invalid_records
        self.pending_messages = pending_messages
        self.lag_s = lag_s
        self._stored.append((self._monotonic(), outcome.inserted))

    def observe_idle(self) -> None:
        """A fetch came back empty: nothing is waiting."""
        self.pending_messages = 0
        self.lag_s = 0.0

    def records_per_s(self) -> float:
        """Records stored per second, averaged over the last `RATE_WINDOW_S`."""
        now = self._monotonic()
        while self._stored and now - self._stored[0][0] > RATE_WINDOW_S:
            self._stored.popleft()
        return sum(inserted for _, inserted in self._stored) / RATE_WINDOW_S

    def render(self) -> str:
        name = "edgefabric_telemetry"
        lines = [
            f"# HELP {name}_records_ingested_total Telemetry records stored (first delivery of a record id).",
            f"# TYPE {name}_records_ingested_total counter",
            f"{name}_records_ingested_total {self.records_ingested}",
            f"# HELP {name}_records_duplicate_total Telemetry records delivered again and ignored.",
            f"# TYPE {name}_records_duplicate_total counter",
            f"{name}_records_duplicate_total {self.records_duplicate}",
            f"# HELP {name}_rejected_total Refused telemetry: messages (malformed, device_mismatch) "
            "or records (invalid_record).",
            f"# TYPE {name}_rejected_total counter",
            *(
                f'{name}_rejected_total{{reason="{reason}"}} {count}'
                for reason, count in self.rejected.items()
            ),
            f"# HELP {name}_ingest_records_per_second Records stored per second over the last "
            f"{RATE_WINDOW_S:g} s.",
            f"# TYPE {name}_ingest_records_per_second gauge",
            f"{name}_ingest_records_per_second {self.records_per_s():.1f}",
            f"# HELP {name}_consumer_pending_messages Stream messages not yet delivered to the ingest.",
            f"# TYPE {name}_consumer_pending_messages gauge",
            f"{name}_consumer_pending_messages {self.pending_messages}",
            f"# HELP {name}_consumer_lag_seconds Age of the newest message stored, at its commit "
            "(0 when caught up).",
            f"# TYPE {name}_consumer_lag_seconds gauge",
            f"{name}_consumer_lag_seconds {self.lag_s:.3f}",
        ]
        return "\n".join(lines) + "\n"


@dataclass
class _Running:
    consumer: DurableConsumer
    storage: ThreadPoolExecutor
    db: Database
    repository: TelemetryRepository
    rounds: asyncio.Queue[list[StreamMessage]] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    unsettled: set[StreamMessage] = field(default_factory=set)
    """Fetched and not yet acked, termed or nak'ed: nak'ed on `stop` so they come back at once."""
    is_stopping: bool = False
    task: asyncio.Task[None] | None = None


class TelemetryIngest:
    """The ingest worker: `start` opens the consumer and the database, `stop` undoes both.

    Two loops in one task group: one fetches rounds, the other admits and stores each round in the
    storage thread (which owns the database connection) and then settles its messages. A queue of
    one round between them lets the next fetch overlap the work on the current round, so at most
    three rounds are unsettled (`max_ack_pending` allows four). Decoding in a thread of its own, to
    overlap the commit, measured no faster: both halves mostly hold the GIL.
    """

    def __init__(
        self,
        bus: NatsBus,
        database_path: Path,
        *,
        fetch_max_messages: int = 200,
        fetch_timeout_s: float = 1.0,
        ack_wait_s: float = 10.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        self._bus = bus
        self._database_path = database_path
        self.metrics = IngestMetrics()
        self._fetch_max_messages = fetch_max_messages
        self._fetch_timeout_s = fetch_timeout_s
        self._ack_wait_s = ack_wait_s
        self._retry_delay_s = retry_delay_s
        self._running: _Running | None = None

    async def start(self) -> None:
        consumer = DurableConsumer(
            self._bus,
            stream=subjects.TELEMETRY_STREAM,
            durable=CONSUMER_NAME,
            filter_subject=subjects.telemetry().nats,
            ack_wait_s=self._ack_wait_s,
            max_ack_pending=4 * self._fetch_max_messages,
        )
        await consumer.open()
        storage = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telemetry-storage")
        try:
            db = await asyncio.get_running_loop().run_in_executor(storage, _open_storage, self._database_path)
        except DataDirError:
            storage.shutdown()
            await consumer.close()
            raise
        running = _Running(consumer, storage, db, TelemetryRepository(db))
        running.task = asyncio.create_task(self._run(running), name="telemetry-ingest")
        self._running = running

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        running.is_stopping = True
        if running.task is not None:
            await cancel_and_wait(running.task)
        await self._settle(running, list(running.unsettled), None, delay_s=0.0)
        await running.consumer.close()
        # A store cancelled mid-transaction still finishes in its thread; the close queues behind it.
        await asyncio.get_running_loop().run_in_executor(running.storage, running.db.close)
        running.storage.shutdown()

    async def _run(self, running: _Running) -> None:
        try:
            async with asyncio.TaskGroup() as loops:
                loops.create_task(self._fetch_rounds(running))
                loops.create_task(self._store_rounds(running))
        except Exception:
            logger.exception("telemetry ingest stopped")

    async def _fetch_rounds(self, running: _Running) -> None:
        while not running.is_stopping:
            try:
                messages = await running.consumer.fetch(self._fetch_max_messages, self._fetch_timeout_s)
            except BusError as e:
                logger.warning("telemetry fetch failed; retrying in %g s: %s", self._retry_delay_s, e)
                await asyncio.sleep(self._retry_delay_s)
                continue
            if not messages:
                if running.rounds.empty():
                    self.metrics.observe_idle()
                continue
            running.unsettled.update(messages)
            await running.rounds.put(messages)

    async def _store_rounds(self, running: _Running) -> None:
        loop = asyncio.get_running_loop()
        while not running.is_stopping:
            messages = await running.rounds.get()
            try:
                outcome = await loop.run_in_executor(running.storage, _store, running.repository, messages)
            except UnavailableError as e:
                logger.warning("storing %d telemetry message(s) failed; they come back: %s", len(messages), e)
                await self._settle(running, messages, None, delay_s=self._retry_delay_s)
                continue
            await self._settle(running, messages, outcome.verdicts, delay_s=self._retry_delay_s)
            newest = messages[-1]
            self.metrics.observe_round(
                outcome,
                pending_messages=newest.pending_after,
                lag_s=max(0.0, (datetime.now(UTC) - newest.stored_at).total_seconds()),
            )

    async def _settle(
        self,
        running: _Running,
        messages: Sequence[StreamMessage],
        verdicts: Sequence[Admitted | Rejected] | None,
        *,
        delay_s: float,
    ) -> None:
        """Ack what was stored, term what never can be; nak all (after `delay_s`) when nothing was."""
        try:
            for i, message in enumerate(messages):
                running.unsettled.discard(message)
                if verdicts is None:
                    await running.consumer.nak(message, delay_s)
                elif isinstance(verdicts[i], Rejected):
                    await running.consumer.term(message)
                else:
                    await running.consumer.ack(message)
        except BusError as e:
            logger.warning("settling telemetry messages failed; they will be redelivered: %s", e)


def _open_storage(path: Path) -> Database:
    """The ingest's own connection, with a page cache (2 MB by default) that holds the pages the
    inserts keep coming back to: about 10 % more records per second in the benchmark."""
    db = open_database(path)
    db.execute(f"PRAGMA cache_size = -{STORAGE_CACHE_KIB}")
    return db


def _store(repository: TelemetryRepository, messages: Sequence[StreamMessage]) -> RoundOutcome:
    """Admit each message, logging the refused ones, and store the admitted ones in one transaction
    (storage thread). `UnavailableError` when the transaction did not commit."""
    verdicts = [admit(m.subject, m.payload) for m in messages]
    for message, verdict in zip(messages, verdicts, strict=True):
        if isinstance(verdict, Rejected):
            logger.warning(
                "telemetry message on %s refused (%s): %s", message.subject, verdict.reason, verdict.detail
            )
    batches = [v.batch for v in verdicts if isinstance(v, Admitted)]
    inserted = repository.insert(batches, received_at=datetime.now(UTC))
    return RoundOutcome(
        verdicts=verdicts, inserted=inserted, duplicates=sum(len(b.records) for b in batches) - inserted
    )
