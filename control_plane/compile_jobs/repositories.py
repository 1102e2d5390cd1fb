"""The `compile_jobs` table (one row per job) and `compile_job_profiles` (one row per profile of a job).

State changes are conditional on the state they leave (`WHERE state = ...`), so a job never moves
backwards or finishes twice; each returns whether it applied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlite_utils import Database

from control_plane.compile_jobs.schemas import (
    FINISHED_BUILDS,
    CompileJob,
    JobState,
    ProfileBuild,
    Quantization,
)
from control_plane.db import db_time

_NEWEST_FIRST = "created_at DESC, rowid DESC"
_OPEN_BUILDS = "status NOT IN ('rejected', 'failed')"


class CompileJobRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._jobs = db.table("compile_jobs")
        self._profiles = db.table("compile_job_profiles")

    def insert(
        self,
        *,
        job_id: str,
        model: str,
        version: str,
        quantization: Quantization | None,
        profiles: Sequence[str],
        created_at: datetime,
        created_by: str,
    ) -> None:
        self._jobs.insert(
            {
                "id": job_id,
                "model": model,
                "version": version,
                "quantization": quantization,
                "state": "queued",
                "reason": None,
                "created_at": db_time(created_at),
                "created_by": created_by,
                "started_at": None,
                "finished_at": None,
            }
        )
        self._profiles.insert_all(
            {"job_id": job_id, "position": position, "profile": profile, "status": "pending"}
            for position, profile in enumerate(profiles)
        )

    def get(self, job_id: str) -> CompileJob | None:
        jobs = self._with_profiles(list(self._jobs.rows_where("id = ?", [job_id], limit=1)))
        return jobs[0] if jobs else None

    def page(
        self,
        *,
        limit: int,
        offset: int,
        model: str | None = None,
        version: str | None = None,
        state: JobState | None = None,
    ) -> tuple[list[CompileJob], int]:
        """Jobs newest first, optionally only those of `model`, `version` and in `state`."""
        filters = {"model": model, "version": version, "state": state}
        where = " AND ".join(f"{column} = ?" for column, value in filters.items() if value is not None)
        values = [value for value in filters.values() if value is not None]
        rows = self._jobs.rows_where(
            where or None, values, order_by=_NEWEST_FIRST, limit=limit, offset=offset
        )
        return self._with_profiles(list(rows)), self._jobs.count_where(where or None, values)

    def latest(self, model: str, version: str, state: JobState) -> CompileJob | None:
        rows = self._jobs.rows_where(
            "model = ? AND version = ? AND state = ?",
            [model, version, state],
            order_by=_NEWEST_FIRST,
            limit=1,
        )
        jobs = self._with_profiles(list(rows))
        return jobs[0] if jobs else None

    def oldest_queued(self) -> str | None:
        row = self._db.execute(
            "SELECT id FROM compile_jobs WHERE state = 'queued' ORDER BY created_at, rowid LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])

    def ids_in_state(self, state: JobState) -> list[str]:
        return [
            str(row[0]) for row in self._db.execute("SELECT id FROM compile_jobs WHERE state = ?", [state])
        ]

    def set_running(self, job_id: str, at: datetime) -> bool:
        cursor = self._db.execute(
            "UPDATE compile_jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'",
            [db_time(at), job_id],
        )
        return cursor.rowcount == 1

    def set_finished(self, job_id: str, state: JobState, reason: str | None, at: datetime) -> bool:
        """`running` -> `state` (succeeded, failed or interrupted)."""
        cursor = self._db.execute(
            "UPDATE compile_jobs SET state = ?, reason = ?, finished_at = ? "
            "WHERE id = ? AND state = 'running'",
            [state, reason, db_time(at), job_id],
        )
        return cursor.rowcount == 1

    def set_stage(self, job_id: str, profile: str, stage: str) -> None:
        """The compiler's latest progress text; a final stage (`built` ...) is also the status."""
        status = stage if stage in FINISHED_BUILDS else "running"
        self._db.execute(
            f"UPDATE compile_job_profiles SET status = ?, stage = ? WHERE job_id = ? AND profile = ? "
            f"AND {_OPEN_BUILDS}",
            [status, stage, job_id, profile],
        )

    def set_build(self, job_id: str, build: ProfileBuild) -> None:
        self._db.execute(
            """
            UPDATE compile_job_profiles SET status = ?, stage = ?, reason = ?, precision = ?, recipe = ?,
                validation = ?, host_latency = ?, size_bytes = ?
            WHERE job_id = ? AND profile = ?
            """,
            [
                build.status,
                build.stage,
                build.reason,
                build.precision,
                build.recipe,
                _json(build.validation),
                _json(build.host_latency),
                build.size_bytes,
                job_id,
                build.profile,
            ],
        )

    def fail_open_builds(self, job_id: str, reason: str) -> None:
        """Every profile of the job not already rejected or failed becomes failed with `reason`."""
        self._db.execute(
            f"UPDATE compile_job_profiles SET status = 'failed', reason = ? "
            f"WHERE job_id = ? AND {_OPEN_BUILDS}",
            [reason, job_id],
        )

    def _with_profiles(self, rows: list[dict[str, Any]]) -> list[CompileJob]:
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        builds: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
        placeholders = ", ".join("?" for _ in ids)
        for build in self._profiles.rows_where(
            f"job_id IN ({placeholders})", ids, order_by="job_id, position"
        ):
            builds[build["job_id"]].append(_build(build))
        return [
            msgspec.convert({**row, "profiles": builds[row["id"]]}, CompileJob, strict=False) for row in rows
        ]


def _json(value: msgspec.Struct | None) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _build(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: json.loads(value) if key in ("validation", "host_latency") and value is not None else value
        for key, value in row.items()
        if key not in ("job_id", "position")
    }
