"""The `releases` and `release_targets` tables: one row per released model version, one per profile.

Invariants (schema `_0005_releases`): (model, version) is unique and so is (model, model_counter);
every target row belongs to a release row (foreign key); archives are found by `sha256` (indexed).
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.db import db_time
from control_plane.releases.schemas import ReleaseInfo, ReleaseTarget
from protocols.manifest import LatencyStats, OutputHistogram

_NEWEST_FIRST = "created_at DESC, rowid DESC"
_histogram_decoder = msgspec.json.Decoder(OutputHistogram)
_latency_decoder = msgspec.json.Decoder(LatencyStats)


class ReleaseRepository:
    def __init__(self, db: Database) -> None:
        self._releases = db.table("releases")
        self._targets = db.table("release_targets")

    def insert(self, info: ReleaseInfo) -> None:
        self._releases.insert(
            {
                "model": info.model,
                "version": info.version,
                "model_counter": info.model_counter,
                "targets_version": info.targets_version,
                "compile_job_id": info.compile_job_id,
                "created_at": db_time(info.created_at),
                "created_by": info.created_by,
            }
        )
        self._targets.insert_all(
            {
                "model": info.model,
                "version": info.version,
                "hw_profile": target.hw_profile,
                "target_path": target.target_path,
                "sha256": target.sha256,
                "size_bytes": target.size_bytes,
                "precision": target.precision,
                "reference_histogram": msgspec.json.encode(target.reference_histogram).decode(),
                "host_latency": msgspec.json.encode(target.host_latency).decode(),
            }
            for target in info.targets
        )

    def get(self, model: str, version: str) -> ReleaseInfo | None:
        rows = list(self._releases.rows_where("model = ? AND version = ?", [model, version], limit=1))
        return self._info(rows[0]) if rows else None

    def page(self, model: str | None, *, limit: int, offset: int) -> tuple[list[ReleaseInfo], int]:
        where, args = ("model = ?", [model]) if model is not None else (None, [])
        rows = self._releases.rows_where(where, args, order_by=_NEWEST_FIRST, limit=limit, offset=offset)
        return [self._info(row) for row in rows], self._releases.count_where(where, args)

    def target_by_sha256(self, sha256: str) -> tuple[str, str, ReleaseTarget] | None:
        """(model, version, target) of the archive with this content hash (one archive, one target)."""
        rows = list(self._targets.rows_where("sha256 = ?", [sha256], limit=1))
        return (rows[0]["model"], rows[0]["version"], _target(rows[0])) if rows else None

    def _info(self, row: dict[str, Any]) -> ReleaseInfo:
        targets = self._targets.rows_where(
            "model = ? AND version = ?", [row["model"], row["version"]], order_by="hw_profile"
        )
        return msgspec.convert(
            {**row, "targets": [_target(target) for target in targets]}, ReleaseInfo, strict=False
        )


def _target(row: dict[str, Any]) -> ReleaseTarget:
    return ReleaseTarget(
        hw_profile=row["hw_profile"],
        target_path=row["target_path"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        precision=row["precision"],
        reference_histogram=_histogram_decoder.decode(row["reference_histogram"]),
        host_latency=_latency_decoder.decode(row["host_latency"]),
    )
