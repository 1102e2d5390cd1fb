"""The `model_versions` table: one row per (model, version); a model is the set of its versions."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.db import db_time
from control_plane.registry.schemas import ModelSummary, ModelVersionInfo

_NEWEST_FIRST = "created_at DESC, rowid DESC"


class ModelVersionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._table = db.table("model_versions")

    def insert(self, info: ModelVersionInfo) -> None:
        self._table.insert(
            {
                "model": info.model,
                "version": info.version,
                "onnx_sha256": info.onnx_sha256,
                "onnx_size": info.onnx_size,
                "calibration_sha256": info.calibration_sha256,
                "validation_sha256": info.validation_sha256,
                "opset": info.opset,
                "inputs": msgspec.json.encode(info.inputs).decode(),
                "outputs": msgspec.json.encode(info.outputs).decode(),
                "created_at": db_time(info.created_at),
                "created_by": info.created_by,
            }
        )

    def get(self, model: str, version: str) -> ModelVersionInfo | None:
        rows = list(self._table.rows_where("model = ? AND version = ?", [model, version], limit=1))
        return _info(rows[0]) if rows else None

    def next_integer_version(self, model: str) -> str:
        """One more than the highest all-digit version of `model` ("1" for a new model)."""
        row = self._db.execute(
            "SELECT MAX(CAST(version AS INTEGER)) FROM model_versions "
            "WHERE model = ? AND version NOT GLOB '*[^0-9]*'",
            [model],
        ).fetchone()
        return str(int(row[0] or 0) + 1)

    def versions_page(self, model: str, *, limit: int, offset: int) -> tuple[list[ModelVersionInfo], int]:
        rows = self._table.rows_where(
            "model = ?", [model], order_by=_NEWEST_FIRST, limit=limit, offset=offset
        )
        return [_info(row) for row in rows], self._table.count_where("model = ?", [model])

    def models_page(self, *, limit: int, offset: int) -> tuple[list[ModelSummary], int]:
        cursor = self._db.execute(
            f"""
            SELECT model, COUNT(*), MAX(created_at),
                   (SELECT version FROM model_versions AS latest WHERE latest.model = v.model
                    ORDER BY {_NEWEST_FIRST} LIMIT 1)
            FROM model_versions AS v GROUP BY model ORDER BY model LIMIT ? OFFSET ?
            """,
            [limit, offset],
        )
        items = [
            msgspec.convert(
                {"name": name, "version_count": count, "updated_at": updated_at, "latest_version": latest},
                ModelSummary,
                strict=False,
            )
            for name, count, updated_at, latest in cursor.fetchall()
        ]
        total = self._db.execute("SELECT COUNT(DISTINCT model) FROM model_versions").fetchone()[0]
        return items, int(total)


def _info(row: dict[str, Any]) -> ModelVersionInfo:
    return msgspec.convert(
        {**row, "inputs": json.loads(row["inputs"]), "outputs": json.loads(row["outputs"])},
        ModelVersionInfo,
        strict=False,
    )
