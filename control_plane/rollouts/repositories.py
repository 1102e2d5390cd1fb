"""The rollout tables (`_0008_rollouts`): `rollouts`, `rollout_waves`, `rollout_devices`, `rollout_decisions`.

Invariants:
- A rollout row, its waves, its devices and its first decision are inserted in one transaction (the
  caller's `db.atomic()`); nothing else ever deletes or re-plans them.
- `rollout_devices.previous` is NULL until the device's assignment before the rollout has been
  read; once read it is the JSON of that `ModelAssignment` (or `null`: none) and never changes, so a
  restart never mistakes the rollout's own assignment for the device's previous one.
- Decisions are numbered per rollout (`seq`) and only ever appended.
- Every method is a few indexed statements; several-statement changes run in the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.db import db_time
from control_plane.rollouts.schemas import (
    Decision,
    DeviceState,
    GateResult,
    RolloutDevice,
    RolloutSpec,
    RolloutState,
    WaveState,
)
from protocols.messages import ModelAssignment, RolloutMode

_assignment_decoder = msgspec.json.Decoder(ModelAssignment | None)


class RolloutRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `rollouts`."""

    id: str
    model: str
    version: str
    model_counter: int
    mode: RolloutMode
    state: RolloutState
    current_wave: int
    baseline_version: str | None
    spec: RolloutSpec
    reason: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    finished_at: datetime | None = None
    promoted_at: datetime | None = None
    rollback_started_at: datetime | None = None


class WaveRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `rollout_waves`; `gates` is the latest evaluation (not a decision)."""

    position: int
    state: WaveState
    started_at: datetime | None
    soak_started_at: datetime | None
    finished_at: datetime | None
    gates: list[GateResult]


class DeviceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `rollout_devices`."""

    device_id: str
    profile: str
    transport: str
    wave: int
    state: DeviceState
    previous: ModelAssignment | None
    is_previous_known: bool
    """Whether `previous` has been read (False: not yet; `previous` None then means nothing)."""
    revision: int | None
    deadline_at: datetime | None
    command_sent_at: datetime | None
    reason: str | None
    updated_at: datetime


class RolloutRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- rollouts --------------------------------------------------------------------------------

    def insert(self, record: RolloutRecord, waves: int) -> None:
        self._db.execute(
            "INSERT INTO rollouts (id, model, version, model_counter, mode, state, current_wave, "
            "baseline_version, spec, reason, created_at, created_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.id,
                record.model,
                record.version,
                record.model_counter,
                record.mode,
                record.state.value,
                record.current_wave,
                record.baseline_version,
                msgspec.json.encode(record.spec).decode(),
                record.reason,
                db_time(record.created_at),
                record.created_by,
                db_time(record.updated_at),
            ],
        )
        self._db.conn.executemany(
            "INSERT INTO rollout_waves (rollout_id, position, state) VALUES (?, ?, 'pending')",
            [(record.id, position) for position in range(waves)],
        )

    def get(self, rollout_id: str) -> RolloutRecord | None:
        rows = list(self._db.table("rollouts").rows_where("id = ?", [rollout_id], limit=1))
        return _rollout(rows[0]) if rows else None

    def page(self, model: str | None, *, limit: int, offset: int) -> tuple[list[RolloutRecord], int]:
        where, args = ("model = ?", [model]) if model is not None else (None, [])
        table = self._db.table("rollouts")
        rows = table.rows_where(
            where, args, order_by="created_at DESC, rowid DESC", limit=limit, offset=offset
        )
        return [_rollout(row) for row in rows], table.count_where(where, args)

    def ids_in(self, states: Iterable[RolloutState], *, limit: int) -> list[str]:
        """Ids of rollouts in `states`, oldest first."""
        wanted = [state.value for state in states]
        marks = ", ".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT id FROM rollouts WHERE state IN ({marks}) ORDER BY created_at, rowid LIMIT ?",
            [*wanted, limit],
        ).fetchall()
        return [row[0] for row in rows]

    def live_of_model(self, model: str, states: Iterable[RolloutState]) -> RolloutRecord | None:
        wanted = [state.value for state in states]
        marks = ", ".join("?" * len(wanted))
        rows = list(
            self._db.table("rollouts").rows_where(
                f"model = ? AND state IN ({marks})", [model, *wanted], limit=1
            )
        )
        return _rollout(rows[0]) if rows else None

    def newer_of_model(self, record: RolloutRecord) -> str | None:
        """The id of a rollout of the same model created after `record`, if there is one."""
        row = self._db.execute(
            "SELECT id FROM rollouts WHERE model = ? "
            "AND rowid > (SELECT rowid FROM rollouts WHERE id = ?) ORDER BY rowid LIMIT 1",
            [record.model, record.id],
        ).fetchone()
        return None if row is None else str(row[0])

    def update(self, rollout_id: str, at: datetime, **fields: Any) -> None:
        """Set `fields` (enums and times converted) and `updated_at`."""
        values = {key: _column(value) for key, value in fields.items()}
        self._db.table("rollouts").update(rollout_id, {**values, "updated_at": db_time(at)})

    # --- waves -----------------------------------------------------------------------------------

    def waves(self, rollout_id: str) -> list[WaveRecord]:
        rows = self._db.table("rollout_waves").rows_where("rollout_id = ?", [rollout_id], order_by="position")
        return [_wave(row) for row in rows]

    def wave(self, rollout_id: str, position: int) -> WaveRecord:
        rows = list(
            self._db.table("rollout_waves").rows_where(
                "rollout_id = ? AND position = ?", [rollout_id, position], limit=1
            )
        )
        return _wave(rows[0])

    def update_wave(self, rollout_id: str, position: int, **fields: Any) -> None:
        values = {key: _column(value) for key, value in fields.items()}
        assignments = ", ".join(f"{key} = ?" for key in values)
        self._db.execute(
            f"UPDATE rollout_waves SET {assignments} WHERE rollout_id = ? AND position = ?",
            [*values.values(), rollout_id, position],
        )

    # --- devices ---------------------------------------------------------------------------------

    def insert_devices(
        self, rollout_id: str, devices: Iterable[tuple[str, str, str, int]], at: datetime
    ) -> None:
        """`(device_id, profile, transport, wave)` of every planned device, all pending."""
        self._db.conn.executemany(
            "INSERT INTO rollout_devices (rollout_id, device_id, profile, transport, wave, state, "
            "updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            [(rollout_id, *device, db_time(at)) for device in devices],
        )

    def devices(
        self,
        rollout_id: str,
        states: Iterable[DeviceState],
        *,
        max_wave: int | None = None,
        limit: int | None = None,
        after_device_id: str | None = None,
    ) -> list[DeviceRecord]:
        """Devices of the rollout in `states` (in waves <= `max_wave`), by wave then id; or, from
        `after_device_id` on (a batch of a scan), by id alone."""
        wanted = [state.value for state in states]
        marks = ", ".join("?" * len(wanted))
        clause = f"rollout_id = ? AND state IN ({marks})"
        params: list[Any] = [rollout_id, *wanted]
        if max_wave is not None:
            clause += " AND wave <= ?"
            params.append(max_wave)
        order_by = "wave, device_id"
        if after_device_id is not None:
            clause += " AND device_id > ?"
            params.append(after_device_id)
            order_by = "device_id"
        rows = self._db.table("rollout_devices").rows_where(clause, params, order_by=order_by, limit=limit)
        return [_device(row) for row in rows]

    def device_page(self, rollout_id: str, *, limit: int, offset: int) -> tuple[list[RolloutDevice], int]:
        table = self._db.table("rollout_devices")
        rows = table.rows_where(
            "rollout_id = ?", [rollout_id], order_by="wave, device_id", limit=limit, offset=offset
        )
        return [_device_view(_device(row)) for row in rows], table.count_where("rollout_id = ?", [rollout_id])

    def state_counts(self, rollout_id: str) -> dict[tuple[int, str], int]:
        """`{(wave, device state): count}` of the rollout's devices."""
        rows = self._db.execute(
            "SELECT wave, state, COUNT(*) FROM rollout_devices WHERE rollout_id = ? GROUP BY wave, state",
            [rollout_id],
        ).fetchall()
        return {(int(wave), str(state)): int(count) for wave, state, count in rows}

    def wave_profiles(self, rollout_id: str, position: int) -> dict[str, int]:
        """`{profile: devices}` of one wave."""
        rows = self._db.execute(
            "SELECT profile, COUNT(*) FROM rollout_devices WHERE rollout_id = ? AND wave = ? "
            "GROUP BY profile",
            [rollout_id, position],
        ).fetchall()
        return {str(profile): int(count) for profile, count in rows}

    def profiles(self, rollout_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT profile FROM rollout_devices WHERE rollout_id = ? ORDER BY profile", [rollout_id]
        ).fetchall()
        return [row[0] for row in rows]

    def update_device(
        self,
        rollout_id: str,
        device_id: str,
        at: datetime,
        *,
        only_if: DeviceState | None = None,
        **fields: Any,
    ) -> bool:
        """Set `fields` of one device (only while it is in state `only_if`); whether it changed."""
        values = {key: _column(value) for key, value in fields.items()}
        assignments = ", ".join(f"{key} = ?" for key in values)
        clause = "rollout_id = ? AND device_id = ?"
        params: list[Any] = [rollout_id, device_id]
        if only_if is not None:
            clause += " AND state = ?"
            params.append(only_if.value)
        cursor = self._db.execute(
            f"UPDATE rollout_devices SET {assignments}, updated_at = ? WHERE {clause}",
            [*values.values(), db_time(at), *params],
        )
        return cursor.rowcount == 1

    def set_previous(self, rollout_id: str, device_id: str, previous: ModelAssignment | None) -> None:
        """Remember the device's assignment before the rollout (once: a known one is kept)."""
        self._db.execute(
            "UPDATE rollout_devices SET previous = ? "
            "WHERE rollout_id = ? AND device_id = ? AND previous IS NULL",
            [msgspec.json.encode(previous).decode(), rollout_id, device_id],
        )

    def move_devices(
        self,
        rollout_id: str,
        from_states: Sequence[DeviceState],
        to_state: DeviceState,
        at: datetime,
        *,
        max_wave: int | None = None,
        is_previous_known: bool = False,
    ) -> int:
        """Move every device in `from_states` (waves <= `max_wave`; only those whose previous
        assignment is known, if asked) to `to_state`, clearing revision, deadline and reason."""
        wanted = [state.value for state in from_states]
        clause = f"rollout_id = ? AND state IN ({', '.join('?' * len(wanted))})"
        params: list[Any] = [rollout_id, *wanted]
        if max_wave is not None:
            clause += " AND wave <= ?"
            params.append(max_wave)
        if is_previous_known:
            clause += " AND previous IS NOT NULL"
        cursor = self._db.execute(
            "UPDATE rollout_devices SET state = ?, revision = NULL, deadline_at = NULL, reason = NULL, "
            f"command_sent_at = NULL, updated_at = ? WHERE {clause}",
            [to_state.value, db_time(at), *params],
        )
        return int(cursor.rowcount)

    # --- decisions -------------------------------------------------------------------------------

    def add_decision(self, rollout_id: str, decision: Decision) -> Decision:
        """Append `decision` (its `seq` is assigned here) and return it as stored."""
        row = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM rollout_decisions WHERE rollout_id = ?", [rollout_id]
        ).fetchone()
        stored = msgspec.structs.replace(decision, seq=int(row[0]) + 1)
        self._db.execute(
            "INSERT INTO rollout_decisions (rollout_id, seq, at, wave, kind, outcome, summary, gates, actor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                rollout_id,
                stored.seq,
                db_time(stored.at),
                stored.wave,
                stored.kind,
                stored.outcome,
                stored.summary,
                msgspec.json.encode(stored.gates).decode(),
                stored.actor,
            ],
        )
        return stored

    def decisions(self, rollout_id: str, *, latest: int) -> list[Decision]:
        """The latest `latest` decisions, oldest first."""
        rows = self._db.execute(
            "SELECT seq, at, wave, kind, outcome, summary, gates, actor FROM rollout_decisions "
            "WHERE rollout_id = ? ORDER BY seq DESC LIMIT ?",
            [rollout_id, latest],
        ).fetchall()
        return [
            msgspec.convert(
                {
                    "seq": seq,
                    "at": at,
                    "wave": wave,
                    "kind": kind,
                    "outcome": outcome,
                    "summary": summary,
                    "gates": json.loads(gates),
                    "actor": actor,
                },
                Decision,
                strict=False,
            )
            for seq, at, wave, kind, outcome, summary, gates, actor in reversed(rows)
        ]

    def last_decision(self, rollout_id: str) -> Decision | None:
        found = self.decisions(rollout_id, latest=1)
        return found[0] if found else None


def _column(value: Any) -> Any:
    if isinstance(value, datetime):
        return db_time(value)
    if isinstance(value, RolloutState | WaveState | DeviceState):
        return value.value
    if isinstance(value, list):
        return msgspec.json.encode(value).decode()
    return value


def _rollout(row: dict[str, Any]) -> RolloutRecord:
    return msgspec.convert({**row, "spec": json.loads(row["spec"])}, RolloutRecord, strict=False)


def _wave(row: dict[str, Any]) -> WaveRecord:
    return msgspec.convert({**row, "gates": json.loads(row["gates"])}, WaveRecord, strict=False)


def _device(row: dict[str, Any]) -> DeviceRecord:
    previous = row["previous"]
    return msgspec.convert(
        {
            **row,
            "previous": None if previous is None else _assignment_decoder.decode(previous),
            "is_previous_known": previous is not None,
        },
        DeviceRecord,
        strict=False,
    )


def _device_view(device: DeviceRecord) -> RolloutDevice:
    return RolloutDevice(
        device_id=device.device_id,
        profile=device.profile,
        wave=device.wave,
        state=device.state,
        previous_version=None if device.previous is None else device.previous.release.version,
        revision=device.revision,
        reason=device.reason,
        updated_at=device.updated_at,
    )
