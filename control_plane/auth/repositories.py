"""The `api_tokens` table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.auth.schemas import TokenRecord
from control_plane.auth.tokens import Role
from control_plane.db import db_time


class TokenRepository:
    def __init__(self, db: Database) -> None:
        self._table = db.table("api_tokens")

    def insert(self, record: TokenRecord) -> None:
        self._table.insert(
            {
                "id": record.id,
                "name": record.name,
                "role": record.role.value,
                "token_hash": record.token_hash,
                "created_at": db_time(record.created_at),
                "expires_at": _optional_time(record.expires_at),
                "revoked_at": _optional_time(record.revoked_at),
                "last_used_at": _optional_time(record.last_used_at),
            }
        )

    def get(self, token_id: str) -> TokenRecord | None:
        rows = list(self._table.rows_where("id = ?", [token_id], limit=1))
        return _record(rows[0]) if rows else None

    def page(self, *, limit: int, offset: int) -> tuple[list[TokenRecord], int]:
        rows = self._table.rows_where(order_by="created_at DESC, id", limit=limit, offset=offset)
        return [_record(row) for row in rows], self._table.count

    def is_empty(self) -> bool:
        return self._table.count == 0

    def count_active(self, role: Role, now: datetime) -> int:
        return self._table.count_where(
            "role = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
            [role.value, db_time(now)],
        )

    def set_revoked(self, token_id: str, at: datetime) -> None:
        self._table.update(token_id, {"revoked_at": db_time(at)})

    def set_last_used(self, token_id: str, at: datetime) -> None:
        self._table.update(token_id, {"last_used_at": db_time(at)})


def _optional_time(moment: datetime | None) -> str | None:
    return None if moment is None else db_time(moment)


def _record(row: dict[str, Any]) -> TokenRecord:
    return msgspec.convert(row, TokenRecord)
