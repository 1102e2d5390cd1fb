"""The on-device store-and-forward queue: one SQLite file (WAL), bounded by a byte quota, prioritised.

Items are opaque payloads keyed by a `record_id`; the forwarder reads them in send order with
`peek_batch` and deletes them with `ack` once the broker has persisted them.

Invariants:
- The payload bytes of all queued items never exceed `max_bytes` (the file itself is larger: SQLite
  pages, indexes and the WAL are not counted).
- Send order is priority first (`EVENT`, then `AGGREGATE`, then `SAMPLE`), then arrival order.
- To make room, the queue evicts lowest priority first, oldest first within a priority, and only items of
  the new item's priority or lower. If that cannot free enough room, nothing is evicted and the new item
  is dropped instead. Every eviction and every drop is counted per priority, persistently.
- `evictions_reported` counts losses already reported upstream; `unreported_evictions()` is the rest.
- `put` is idempotent on `record_id` while the item is queued. Item ids are never reused, so acking a
  stale id never deletes another item.
- Everything survives a process restart (`synchronous=NORMAL`: a power cut may undo the last commits,
  never corrupt the file). All methods are thread-safe: one connection, one lock.
- SQLite failures surface as `TelemetryStorageError`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

from edge_agent.telemetry.errors import TelemetryStorageError


class Priority(IntEnum):
    """What to keep and send first: a higher value wins. Stored as this number, so never renumber."""

    SAMPLE = 1
    AGGREGATE = 2
    EVENT = 3


class PutOutcome(StrEnum):
    """What `put` did with an item."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # an item with this record_id is already queued; nothing changed
    DROPPED = "dropped"  # no room even after evicting lower-or-equal priority items; counted as evicted


@dataclass(frozen=True, slots=True)
class QueuedItem:
    """One queued payload; `id` is what `ack` takes."""

    id: int
    record_id: str
    payload: bytes
    priority: Priority


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of the queue for heartbeats and diagnostics; `evicted` counts since the file was created."""

    depth: int
    queued_bytes: int
    max_bytes: int
    evicted: Mapping[Priority, int]
    unreported_evictions: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_priority ON items (priority, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_REPORTED = "evictions_reported"


def _evicted_counter(priority: Priority) -> str:
    return f"evicted_{priority.name.lower()}"


class TelemetryQueue:
    """A bounded, prioritised, persistent queue of telemetry payloads in the SQLite file `path`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise TelemetryStorageError(path, "open", str(e)) from e

    def put(self, payload: bytes, priority: Priority, record_id: str) -> PutOutcome:
        """Queue `payload`, evicting older lower-or-equal priority items if the quota needs it."""
        with self._transaction("put") as db:
            if db.execute("SELECT 1 FROM items WHERE record_id = ?", (record_id,)).fetchone():
                return PutOutcome.DUPLICATE
            (queued_bytes,) = db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM items").fetchone()
            excess = queued_bytes + len(payload) - self.max_bytes
            victims = _victims(db, priority, excess) if excess > 0 else []
            if victims is None:
                _add(db, _evicted_counter(priority), 1)
                return PutOutcome.DROPPED
            for victim_id, victim_priority in victims:
                db.execute("DELETE FROM items WHERE id = ?", (victim_id,))
                _add(db, _evicted_counter(victim_priority), 1)
            db.execute(
                "INSERT INTO items (record_id, priority, size_bytes, payload) VALUES (?, ?, ?, ?)",
                (record_id, int(priority), len(payload), payload),
            )
            return PutOutcome.STORED

    def peek_batch(self, max_items: int, max_bytes: int) -> list[QueuedItem]:
        """The next items in send order, at most `max_items` and `max_bytes` of payload.

        The first item is always included, however large, so an oversized item cannot block the queue.
        """
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        batch: list[QueuedItem] = []
        batch_bytes = 0
        with self._transaction("peek") as db:
            rows = db.execute(
                "SELECT id, record_id, payload, priority, size_bytes FROM items ORDER BY priority DESC, id"
            )
            for item_id, record_id, payload, priority, size_bytes in rows:
                if len(batch) == max_items or (batch and batch_bytes + size_bytes > max_bytes):
                    break
                batch.append(QueuedItem(item_id, record_id, bytes(payload), Priority(priority)))
                batch_bytes += size_bytes
        return batch

    def ack(self, ids: Iterable[int], *, evictions_reported: int = 0) -> None:
        """Delete sent items and, in the same transaction, count `evictions_reported` as reported."""
        with self._transaction("ack") as db:
            db.executemany("DELETE FROM items WHERE id = ?", ((item_id,) for item_id in ids))
            if evictions_reported:
                _add(db, _REPORTED, evictions_reported)

    def evicted_count(self) -> int:
        """Items evicted or dropped since the queue file was created, all priorities."""
        return sum(self.stats().evicted.values())

    def unreported_evictions(self) -> int:
        """Evictions not yet acknowledged as reported through `ack(..., evictions_reported=)`."""
        return self.stats().unreported_evictions

    def stats(self) -> QueueStats:
        """Depth, queued payload bytes and eviction counters, read in one transaction."""
        with self._transaction("stats") as db:
            depth, queued_bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM items"
            ).fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        evicted = {priority: counters.get(_evicted_counter(priority), 0) for priority in Priority}
        return QueueStats(
            depth=depth,
            queued_bytes=queued_bytes,
            max_bytes=self.max_bytes,
            evicted=evicted,
            unreported_evictions=sum(evicted.values()) - counters.get(_REPORTED, 0),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.rollback()
                    raise
            except sqlite3.Error as e:
                raise TelemetryStorageError(self.path, operation, str(e)) from e


def _victims(db: sqlite3.Connection, priority: Priority, excess: int) -> list[tuple[int, Priority]] | None:
    """(id, priority) of the items to evict to free `excess` bytes for an item of `priority`, or None."""
    victims: list[tuple[int, Priority]] = []
    freed = 0
    rows = db.execute(
        "SELECT id, priority, size_bytes FROM items WHERE priority <= ? ORDER BY priority, id",
        (int(priority),),
    )
    for item_id, victim_priority, size_bytes in rows:
        victims.append((item_id, Priority(victim_priority)))
        freed += size_bytes
        if freed >= excess:
            return victims
    return None


def _add(db: sqlite3.Connection, counter: str, amount: int) -> None:
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
        (counter, amount, amount),
    )
