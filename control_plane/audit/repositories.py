"""The `audit_log` table: append and read, newest first. Rows are never updated or deleted."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.audit.schemas import Actor, AuditDetail, AuditEntry
from control_plane.db import db_time


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._table = db.table("audit_log")

    def append(self, *, at: datetime, actor: Actor, action: str, target: str, detail: AuditDetail) -> None:
        self._table.insert(
            {
                "at": db_time(at),
                "actor": actor.id,
                "actor_name": actor.name,
                "action": action,
                "target": target,
                "detail": json.dumps(detail, sort_keys=True),
            }
        )

    def page(self, *, limit: int, offset: int) -> tuple[list[AuditEntry], int]:
        rows = self._table.rows_where(order_by="id DESC", limit=limit, offset=offset)
        return [_entry(row) for row in rows], self._table.count


def _entry(row: dict[str, Any]) -> AuditEntry:
    return msgspec.convert({**row, "detail": json.loads(row["detail"])}, AuditEntry)
