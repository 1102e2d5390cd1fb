"""The fleet tables: `enrollment_tokens`, `devices`, `device_labels`, `device_models`, `device_twins`.

Labels and active models are rows of their own (indexed by value), so every device filter is an
index lookup and a page of devices costs four indexed queries whatever the fleet size.

Invariants:
- `consume` spends one use of a token in a single conditional UPDATE: two enrollments racing for the
  last use cannot both succeed, even from two processes.
- A revoked device is never marked seen again (`record_heartbeats` skips it).
- Methods that write several statements run inside the caller's transaction (`db.atomic()`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.db import db_time
from control_plane.fleet.schemas import (
    DeviceFilter,
    DeviceInfo,
    DeviceRecord,
    EnrollmentTokenRecord,
)
from protocols.identifiers import StateKind

_DEVICE_COLUMNS = (
    "id, profile, hostname, transport, agent_version, enrolled_at, revoked_at, last_seen, "
    "desired_revision, observed_revision"
)
_TWIN_UPDATE = "revision = excluded.revision, document = excluded.document, updated_at = excluded.updated_at"
_SQLITE_MAX_PARAMETERS = 900
"""Below SQLite's default limit of bound parameters per statement (999 on old builds)."""


class EnrollmentTokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._table = db.table("enrollment_tokens")

    def insert(self, record: EnrollmentTokenRecord) -> None:
        self._table.insert(
            {
                "id": record.id,
                "name": record.name,
                "token_hash": record.token_hash,
                "created_at": db_time(record.created_at),
                "created_by": record.created_by,
                "expires_at": db_time(record.expires_at),
                "revoked_at": None,
                "max_uses": record.max_uses,
                "use_count": record.use_count,
                "labels": json.dumps(record.labels, sort_keys=True),
                "profile": record.profile,
            }
        )

    def get(self, token_id: str) -> EnrollmentTokenRecord | None:
        rows = list(self._table.rows_where("id = ?", [token_id], limit=1))
        return _token(rows[0]) if rows else None

    def page(self, *, limit: int, offset: int) -> tuple[list[EnrollmentTokenRecord], int]:
        rows = self._table.rows_where(order_by="created_at DESC, id", limit=limit, offset=offset)
        return [_token(row) for row in rows], self._table.count

    def consume(self, token_id: str, now: datetime) -> bool:
        """Spend one use if the token is unrevoked, unexpired and not used up; False otherwise."""
        cursor = self._db.execute(
            "UPDATE enrollment_tokens SET use_count = use_count + 1 "
            "WHERE id = ? AND revoked_at IS NULL AND expires_at > ? AND use_count < max_uses",
            [token_id, db_time(now)],
        )
        return cursor.rowcount == 1

    def set_revoked(self, token_id: str, at: datetime) -> None:
        self._table.update(token_id, {"revoked_at": db_time(at)})


class DeviceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._devices = db.table("devices")

    # --- enrollment and credentials ------------------------------------------------------------

    def insert(self, record: DeviceRecord, labels: Mapping[str, str]) -> None:
        self._devices.insert(
            {
                "id": record.id,
                "public_key": record.public_key,
                "credential_id": record.credential_id,
                "credential_hash": record.credential_hash,
                "profile": record.profile,
                "hostname": record.hostname,
                "transport": record.transport,
                "agent_version": record.agent_version,
                "enrollment_token_id": record.enrollment_token_id,
                "enrolled_at": db_time(record.enrolled_at),
            }
        )
        self._db.conn.executemany(
            "INSERT INTO device_labels (device_id, key, value) VALUES (?, ?, ?)",
            [(record.id, key, value) for key, value in labels.items()],
        )

    def exists(self, device_id: str) -> bool:
        return self._devices.count_where("id = ?", [device_id]) > 0

    def holder_of_key(self, public_key: str) -> str | None:
        """The id of the device enrolled with `public_key` (revoked or not), if any."""
        row = self._db.execute("SELECT id FROM devices WHERE public_key = ?", [public_key]).fetchone()
        return None if row is None else str(row[0])

    def get(self, device_id: str) -> DeviceRecord | None:
        rows = list(self._devices.rows_where("id = ?", [device_id], limit=1))
        return msgspec.convert(rows[0], DeviceRecord, strict=False) if rows else None

    def by_credential(self, credential_id: str) -> DeviceRecord | None:
        rows = list(self._devices.rows_where("credential_id = ?", [credential_id], limit=1))
        return msgspec.convert(rows[0], DeviceRecord, strict=False) if rows else None

    def set_revoked(self, device_id: str, at: datetime) -> None:
        self._devices.update(device_id, {"revoked_at": db_time(at)})

    # --- reading -------------------------------------------------------------------------------

    def counts(self, *, online_since: datetime) -> tuple[int, int, int]:
        """(enrolled and not revoked, online, revoked) over the whole fleet, in one scan."""
        row = self._db.execute(
            "SELECT COUNT(*) FILTER (WHERE revoked_at IS NULL),"
            " COUNT(*) FILTER (WHERE revoked_at IS NULL AND last_seen IS NOT NULL AND last_seen > ?),"
            " COUNT(*) FILTER (WHERE revoked_at IS NOT NULL) FROM devices",
            [db_time(online_since)],
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def info(self, device_id: str, *, online_since: datetime) -> DeviceInfo | None:
        rows = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = ?", [device_id]).fetchall()
        infos = self._infos(rows, online_since)
        return infos[0] if infos else None

    def page(
        self, where: DeviceFilter, *, online_since: datetime, limit: int, offset: int
    ) -> tuple[list[DeviceInfo], int]:
        """Devices matching `where`, by id; a heartbeat after `online_since` makes a device online."""
        clauses: list[str] = []
        params: list[Any] = []
        for key, value in where.labels:
            clauses.append("id IN (SELECT device_id FROM device_labels WHERE key = ? AND value = ?)")
            params += [key, value]
        if where.profile is not None:
            clauses.append("profile = ?")
            params.append(where.profile)
        if where.is_online is not None:
            online = "(revoked_at IS NULL AND last_seen IS NOT NULL AND last_seen > ?)"
            clauses.append(online if where.is_online else f"NOT {online}")
            params.append(db_time(online_since))
        if where.model is not None:
            if where.model_version is None:
                clauses.append("id IN (SELECT device_id FROM device_models WHERE model = ?)")
                params.append(where.model)
            else:
                clauses.append("id IN (SELECT device_id FROM device_models WHERE model = ? AND version = ?)")
                params += [where.model, where.model_version]
        condition = " AND ".join(clauses) or "1"
        total = self._db.execute(f"SELECT COUNT(*) FROM devices WHERE {condition}", params).fetchone()[0]
        rows = self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE {condition} ORDER BY id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        return self._infos(rows, online_since), int(total)

    def _infos(self, rows: Sequence[tuple[Any, ...]], online_since: datetime) -> list[DeviceInfo]:
        ids = [row[0] for row in rows]
        labels = self._grouped("SELECT device_id, key, value FROM device_labels", ids)
        models = self._grouped("SELECT device_id, model, version FROM device_models", ids)
        since = db_time(online_since)
        infos = []
        for (
            device_id,
            profile,
            hostname,
            transport,
            agent_version,
            enrolled_at,
            revoked_at,
            last_seen,
            desired_revision,
            observed_revision,
        ) in rows:
            infos.append(
                msgspec.convert(
                    {
                        "id": device_id,
                        "labels": labels.get(device_id, {}),
                        "profile": profile,
                        "online": revoked_at is None and last_seen is not None and last_seen > since,
                        "last_seen": last_seen,
                        "active_models": models.get(device_id, {}),
                        "agent_version": agent_version,
                        "hostname": hostname,
                        "transport": transport,
                        "desired_revision": desired_revision,
                        "observed_revision": observed_revision,
                        "enrolled_at": enrolled_at,
                        "revoked_at": revoked_at,
                    },
                    DeviceInfo,
                    strict=False,
                )
            )
        return infos

    def _grouped(self, select: str, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """`{device_id: {key: value}}` of a two-column child table, for the devices in `ids`."""
        grouped: dict[str, dict[str, str]] = {}
        for start in range(0, len(ids), _SQLITE_MAX_PARAMETERS):
            chunk = ids[start : start + _SQLITE_MAX_PARAMETERS]
            marks = ", ".join("?" * len(chunk))
            for device_id, key, value in self._db.execute(f"{select} WHERE device_id IN ({marks})", chunk):
                grouped.setdefault(device_id, {})[key] = value
        return grouped

    # --- labels --------------------------------------------------------------------------------

    def labels(self, device_id: str) -> dict[str, str]:
        return self._grouped("SELECT device_id, key, value FROM device_labels", [device_id]).get(
            device_id, {}
        )

    def patch_labels(self, device_id: str, patch: Mapping[str, str | None]) -> None:
        self._db.conn.executemany(
            "DELETE FROM device_labels WHERE device_id = ? AND key = ?",
            [(device_id, key) for key, value in patch.items() if value is None],
        )
        self._db.conn.executemany(
            "INSERT INTO device_labels (device_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value",
            [(device_id, key, value) for key, value in patch.items() if value is not None],
        )

    # --- twins ---------------------------------------------------------------------------------

    def set_desired(self, device_id: str, revision: int, document: bytes, at: datetime) -> None:
        self._devices.update(device_id, {"desired_revision": revision})
        self._db.execute(
            "INSERT INTO device_twins (device_id, kind, revision, document, updated_at) "
            f"VALUES (?, 'desired', ?, ?, ?) ON CONFLICT (device_id, kind) DO UPDATE SET {_TWIN_UPDATE}",
            [device_id, revision, document.decode(), db_time(at)],
        )

    def twin(self, device_id: str, kind: StateKind) -> bytes | None:
        row = self._db.execute(
            "SELECT document FROM device_twins WHERE device_id = ? AND kind = ?", [device_id, kind]
        ).fetchone()
        return None if row is None else str(row[0]).encode()

    # --- what devices tell us ------------------------------------------------------------------

    def record_heartbeats(self, last_seen: Mapping[str, datetime]) -> None:
        self._db.conn.executemany(
            "UPDATE devices SET last_seen = ? WHERE id = ? AND revoked_at IS NULL "
            "AND (last_seen IS NULL OR last_seen < ?)",
            [(db_time(at), device_id, db_time(at)) for device_id, at in last_seen.items()],
        )

    def replace_models(self, active_models: Mapping[str, Mapping[str, str]]) -> None:
        """Set each device's active models (devices that are not enrolled are skipped)."""
        self._db.conn.executemany(
            "DELETE FROM device_models WHERE device_id = ?", [(device_id,) for device_id in active_models]
        )
        self._db.conn.executemany(
            "INSERT INTO device_models (device_id, model, version) "
            "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?)",
            [
                (device_id, model, version, device_id)
                for device_id, models in active_models.items()
                for model, version in models.items()
            ],
        )

    def record_reported(self, reported: Iterable[tuple[str, int, str, bytes]], at: datetime) -> None:
        """`(device_id, observed_revision, agent_version, document)` of each new reported state."""
        batch = list(reported)
        self._db.conn.executemany(
            "UPDATE devices SET observed_revision = ?, agent_version = ? WHERE id = ?",
            [(revision, agent_version, device_id) for device_id, revision, agent_version, _ in batch],
        )
        self._db.conn.executemany(
            "INSERT INTO device_twins (device_id, kind, revision, document, updated_at) "
            "SELECT ?, 'reported', ?, ?, ? WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?) "
            f"ON CONFLICT (device_id, kind) DO UPDATE SET {_TWIN_UPDATE}",
            [
                (device_id, revision, document.decode(), db_time(at), device_id)
                for device_id, revision, _, document in batch
            ],
        )


def _token(row: dict[str, Any]) -> EnrollmentTokenRecord:
    return msgspec.convert({**row, "labels": json.loads(row["labels"])}, EnrollmentTokenRecord, strict=False)
