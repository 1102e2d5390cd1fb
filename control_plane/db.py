"""The control plane's SQLite database (via sqlite-utils): opening it and upgrading its schema.

`<data_dir>/control-plane.db` in WAL mode. The schema is the ordered `MIGRATIONS` list: migration N
is `MIGRATIONS[N - 1]`, and `schema_migrations` records each one applied (version, name, time).

Invariants:
- `migrate()` applies exactly the missing migrations, in order, each in its own transaction together
  with its `schema_migrations` row: a crash leaves the database at a whole version, an older data dir
  upgrades in place, and running it again is a no-op.
- A migration, once released, never changes; a schema change is a new migration appended to the list.
- A database from a newer release (a version this code does not know) is refused, not touched.
- `audit_log` is append-only: triggers abort any UPDATE or DELETE on it.
- One connection per process, used from one thread at a time (the event loop); statements are short.
  `synchronous=NORMAL` in WAL mode: a committed transaction survives a process crash (`kill -9`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from control_plane.errors import DataDirError

Migration = Callable[[Database], None]


def _0001_api_tokens(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
            token_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            last_used_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX api_tokens_created_at ON api_tokens (created_at, id)")


def _0002_audit_log(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            actor_name TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    for event in ("UPDATE", "DELETE"):
        db.execute(
            f"""
            CREATE TRIGGER audit_log_no_{event.lower()} BEFORE {event} ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END
            """
        )


def _0003_model_versions(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE model_versions (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            onnx_sha256 TEXT NOT NULL,
            onnx_size INTEGER NOT NULL,
            calibration_sha256 TEXT,
            validation_sha256 TEXT,
            opset INTEGER NOT NULL,
            inputs TEXT NOT NULL,
            outputs TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            PRIMARY KEY (model, version)
        )
        """
    )
    db.execute("CREATE INDEX model_versions_created_at ON model_versions (model, created_at)")


def _0004_compile_jobs(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE compile_jobs (
            id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            quantization TEXT CHECK (quantization IN ('static-qdq', 'dynamic')),
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'interrupted')),
            reason TEXT,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
        )
        """
    )
    db.execute("CREATE INDEX compile_jobs_created_at ON compile_jobs (created_at, id)")
    db.execute("CREATE INDEX compile_jobs_state ON compile_jobs (state, created_at)")
    db.execute("CREATE INDEX compile_jobs_model_version ON compile_jobs (model, version, created_at)")
    db.execute(
        """
        CREATE TABLE compile_job_profiles (
            job_id TEXT NOT NULL REFERENCES compile_jobs (id),
            position INTEGER NOT NULL,
            profile TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'built', 'rejected', 'failed')),
            stage TEXT,
            reason TEXT,
            precision TEXT,
            recipe TEXT,
            validation TEXT,
            host_latency TEXT,
            size_bytes INTEGER,
            PRIMARY KEY (job_id, position),
            UNIQUE (job_id, profile)
        )
        """
    )


def _0005_releases(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE releases (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            model_counter INTEGER NOT NULL,
            targets_version INTEGER NOT NULL,
            compile_job_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            PRIMARY KEY (model, version),
            UNIQUE (model, model_counter)
        )
        """
    )
    db.execute("CREATE INDEX releases_created_at ON releases (created_at)")
    db.execute(
        """
        CREATE TABLE release_targets (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            hw_profile TEXT NOT NULL,
            target_path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            precision TEXT NOT NULL,
            reference_histogram TEXT NOT NULL,
            host_latency TEXT NOT NULL,
            PRIMARY KEY (model, version, hw_profile),
            FOREIGN KEY (model, version) REFERENCES releases (model, version)
        )
        """
    )
    db.execute("CREATE INDEX release_targets_sha256 ON release_targets (sha256)")


def _0006_fleet(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE enrollment_tokens (
            id TEXT PRIMARY KEY,
            name TEXT,
            token_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            revoked_at TEXT,
            max_uses INTEGER NOT NULL CHECK (max_uses >= 1),
            use_count INTEGER NOT NULL DEFAULT 0 CHECK (use_count BETWEEN 0 AND max_uses),
            labels TEXT NOT NULL DEFAULT '{}',
            profile TEXT
        )
        """
    )
    db.execute("CREATE INDEX enrollment_tokens_created_at ON enrollment_tokens (created_at, id)")
    db.execute(
        """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL UNIQUE,
            credential_id TEXT NOT NULL UNIQUE,
            credential_hash TEXT NOT NULL,
            profile TEXT NOT NULL,
            hostname TEXT NOT NULL DEFAULT '',
            transport TEXT NOT NULL CHECK (transport IN ('nats', 'mqtt')),
            agent_version TEXT NOT NULL DEFAULT '',
            enrollment_token_id TEXT NOT NULL REFERENCES enrollment_tokens (id),
            enrolled_at TEXT NOT NULL,
            revoked_at TEXT,
            last_seen TEXT,
            desired_revision INTEGER NOT NULL DEFAULT 0,
            observed_revision INTEGER
        )
        """
    )
    db.execute("CREATE INDEX devices_profile ON devices (profile, id)")
    db.execute("CREATE INDEX devices_last_seen ON devices (last_seen)")
    for table, key, value in (("device_labels", "key", "value"), ("device_models", "model", "version")):
        db.execute(
            f"""
            CREATE TABLE {table} (
                device_id TEXT NOT NULL REFERENCES devices (id),
                {key} TEXT NOT NULL,
                {value} TEXT NOT NULL,
                PRIMARY KEY (device_id, {key})
            ) WITHOUT ROWID
            """
        )
        db.execute(f"CREATE INDEX {table}_by_{value} ON {table} ({key}, {value}, device_id)")
    db.execute(
        """
        CREATE TABLE device_twins (
            device_id TEXT NOT NULL REFERENCES devices (id),
            kind TEXT NOT NULL CHECK (kind IN ('desired', 'reported')),
            revision INTEGER NOT NULL,
            document TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (device_id, kind)
        ) WITHOUT ROWID
        """
    )


def _0007_telemetry(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE telemetry_records (
            record_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            mode TEXT NOT NULL CHECK (mode IN ('active', 'shadow')),
            minute_start_s INTEGER NOT NULL,
            request_count INTEGER NOT NULL,
            error_count INTEGER NOT NULL,
            latency_ms_sum REAL NOT NULL,
            latency_ms_bounds TEXT NOT NULL,
            latency_ms_buckets TEXT NOT NULL,
            output_histogram TEXT NOT NULL,
            shadow_agreement REAL,
            UNIQUE (minute_start_s, record_id)
        )
        """
    )
    db.execute("CREATE INDEX telemetry_records_version ON telemetry_records (model, version, minute_start_s)")
    db.execute("CREATE INDEX telemetry_records_device ON telemetry_records (device_id, minute_start_s)")
    db.execute(
        """
        CREATE TABLE telemetry_evictions (
            batch_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            evicted_count INTEGER NOT NULL,
            received_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX telemetry_evictions_device ON telemetry_evictions (device_id)")


def _0008_rollouts(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            model_counter INTEGER NOT NULL,
            mode TEXT NOT NULL CHECK (mode IN ('active', 'shadow')),
            state TEXT NOT NULL CHECK (state IN ('running', 'paused', 'halted', 'rolling_back',
                                                 'rolled_back', 'completed', 'aborted')),
            current_wave INTEGER NOT NULL DEFAULT 0,
            baseline_version TEXT,
            spec TEXT NOT NULL,
            reason TEXT,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT,
            promoted_at TEXT,
            rollback_started_at TEXT,
            FOREIGN KEY (model, version) REFERENCES releases (model, version)
        )
        """
    )
    db.execute("CREATE INDEX rollouts_created_at ON rollouts (created_at, id)")
    db.execute("CREATE INDEX rollouts_state ON rollouts (state, model)")
    db.execute(
        """
        CREATE TABLE rollout_waves (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            position INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'installing', 'soaking', 'passed', 'failed')),
            started_at TEXT,
            soak_started_at TEXT,
            finished_at TEXT,
            gates TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (rollout_id, position)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            device_id TEXT NOT NULL,
            profile TEXT NOT NULL,
            transport TEXT NOT NULL CHECK (transport IN ('nats', 'mqtt')),
            wave INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'assigned', 'installed', 'failed', 'skipped',
                                                 'reverting', 'reverted', 'unreverted')),
            previous TEXT,
            revision INTEGER,
            deadline_at TEXT,
            command_sent_at TEXT,
            reason TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (rollout_id, device_id)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX rollout_devices_wave ON rollout_devices (rollout_id, state, wave)")
    db.execute(
        """
        CREATE TABLE rollout_decisions (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            wave INTEGER,
            kind TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('passed', 'failed', 'waiting', 'info')),
            summary TEXT NOT NULL,
            gates TEXT NOT NULL DEFAULT '[]',
            actor TEXT NOT NULL,
            PRIMARY KEY (rollout_id, seq)
        ) WITHOUT ROWID
        """
    )


MIGRATIONS: Sequence[Migration] = (
    _0001_api_tokens,
    _0002_audit_log,
    _0003_model_versions,
    _0004_compile_jobs,
    _0005_releases,
    _0006_fleet,
    _0007_telemetry,
    _0008_rollouts,
)


def db_time(moment: datetime) -> str:
    """How timestamps are stored: UTC ISO 8601 with microseconds, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def open_database(path: Path) -> Database:
    """Open (creating if needed) the database at `path` in WAL mode. Does not migrate."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False)
        db = Database(conn, execute_plugins=False)
        db.execute("PRAGMA busy_timeout = 5000")
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
    except (OSError, sqlite3.DatabaseError) as e:
        raise DataDirError(path, f"cannot open the database: {e}") from e
    return db


def schema_version(db: Database) -> int:
    """The highest migration applied (0 for an empty database)."""
    if not db.table("schema_migrations").exists():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations `db` lacks, in order; return the versions applied (empty: up to date)."""
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = schema_version(db)
        if current > len(migrations):
            raise DataDirError(
                _db_path(db),
                f"schema version {current} is newer than this release knows ({len(migrations)}); "
                "upgrade edgefabric",
            )
        applied: list[int] = []
        for version, migration in enumerate(migrations[current:], start=current + 1):
            with db.atomic():
                migration(db)
                db.table("schema_migrations").insert(
                    {
                        "version": version,
                        "name": migration.__name__.lstrip("_"),
                        "applied_at": db_time(datetime.now(UTC)),
                    }
                )
            applied.append(version)
    except sqlite3.DatabaseError as e:
        raise DataDirError(_db_path(db), f"migration failed: {e}") from e
    return applied


def _db_path(db: Database) -> Path:
    row = db.execute("PRAGMA database_list").fetchone()
    return Path(row[2] or ":memory:")
