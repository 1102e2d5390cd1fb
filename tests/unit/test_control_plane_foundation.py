"""Control-plane foundations without HTTP: migrations, config loading, the rate limiter, metrics text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from control_plane.config import RateLimit, load_config
from control_plane.db import MIGRATIONS, migrate, open_database, schema_version
from control_plane.errors import ConfigError, DataDirError
from control_plane.web.metrics import HttpMetrics
from control_plane.web.rate_limit import TokenBucketLimiter

# --- migrations --------------------------------------------------------------------------------


def test_new_database_is_migrated_to_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    db = open_database(tmp_path / "cp.db")
    assert migrate(db) == list(range(1, len(MIGRATIONS) + 1))
    assert schema_version(db) == len(MIGRATIONS)
    assert db.journal_mode == "wal"
    assert {"api_tokens", "audit_log", "schema_migrations"} <= set(db.table_names())


def test_migrating_again_is_a_no_op(tmp_path: Path) -> None:
    db = open_database(tmp_path / "cp.db")
    migrate(db)
    assert migrate(db) == []
    assert db.table("schema_migrations").count == len(MIGRATIONS)


def test_database_at_migration_1_upgrades_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    old = open_database(path)
    assert migrate(old, MIGRATIONS[:1]) == [1]
    old.table("api_tokens").insert(
        {"id": "0123456789abcdef", "name": "old", "role": "admin", "token_hash": "h", "created_at": "2030"}
    )
    old.close()

    db = open_database(path)
    assert migrate(db) == list(range(2, len(MIGRATIONS) + 1))
    assert schema_version(db) == len(MIGRATIONS)
    assert [row["name"] for row in db.table("api_tokens").rows] == ["old"]
    versions = [(row["version"], row["name"]) for row in db.table("schema_migrations").rows]
    assert versions == [
        (n, migration.__name__.removeprefix("_")) for n, migration in enumerate(MIGRATIONS, 1)
    ]


def test_database_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    db = open_database(tmp_path / "cp.db")
    migrate(db)
    db.table("schema_migrations").insert({"version": 99, "name": "future", "applied_at": "2099"})
    with pytest.raises(DataDirError, match="newer than this release"):
        migrate(db)


def test_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    db = open_database(tmp_path / "cp.db")

    def broken(database: Database) -> None:
        database.execute("CREATE TABLE half_done (x INTEGER)")
        database.execute("THIS IS NOT SQL")

    with pytest.raises(DataDirError, match="migration failed"):
        migrate(db, [*MIGRATIONS, broken])
    assert schema_version(db) == len(MIGRATIONS)
    assert "half_done" not in db.table_names()


def test_audit_log_is_append_only(tmp_path: Path) -> None:
    db = open_database(tmp_path / "cp.db")
    migrate(db)
    db.table("audit_log").insert(
        {"at": "2030", "actor": "a", "actor_name": "a", "action": "x.done", "target": "x:1", "detail": "{}"}
    )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit_log SET actor = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit_log")


def test_a_file_that_is_not_a_database_is_a_data_dir_error(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(DataDirError):
        migrate(open_database(path))


# --- config ------------------------------------------------------------------------------------


def test_config_precedence_is_defaults_file_environment_flags(tmp_path: Path) -> None:
    file = tmp_path / "cp.toml"
    file.write_text(
        'host = "10.0.0.1"\nport = 9000\nmax_body_bytes = 4096\n[rate_limit_per_ip]\nburst = 7\nper_s = 1.5\n'
    )
    config = load_config(
        file=file,
        environ={"EDGEFABRIC_PORT": "9100", "EDGEFABRIC_ADVERTISE": "false", "HOME": str(tmp_path)},
        overrides={"port": 9200, "host": None, "data_dir": str(tmp_path / "d")},
    )
    assert (config.host, config.port, config.max_body_bytes) == ("10.0.0.1", 9200, 4096)
    assert config.advertise is False
    assert config.rate_limit_per_ip == RateLimit(burst=7, per_s=1.5)
    assert config.database_path == tmp_path / "d" / "control-plane.db"


def test_data_dir_defaults_to_the_users_data_home(tmp_path: Path) -> None:
    config = load_config(environ={"XDG_DATA_HOME": str(tmp_path)})
    assert config.data_path == tmp_path / "edgefabric-control-plane"
    assert config.host == "127.0.0.1" and config.nats_url is None


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("prot = 1\n", {}, "unknown field `prot`"),
        ("", {"EDGEFABRIC_PORT": "seventy"}, "port"),
        ("port = 70000\n", {}, "<= 65535"),
        ("[rate_limit_per_ip]\nburst = 0\nper_s = 1.0\n", {}, "burst"),
        ("port = [", {}, "cp.toml"),
    ],
)
def test_bad_config_is_one_error_naming_the_problem(
    tmp_path: Path, toml: str, environ: dict[str, str], message: str
) -> None:
    file = tmp_path / "cp.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match="invalid configuration") as error:
        load_config(file=file, environ={"HOME": str(tmp_path), **environ})
    assert message in str(error.value)


# --- rate limiter ------------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_admits_a_burst_then_says_how_long_to_wait() -> None:
    clock = FakeMonotonic()
    limiter = TokenBucketLimiter(RateLimit(burst=3, per_s=2.0), clock)
    assert [limiter.acquire("ip") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("ip") == pytest.approx(0.5)
    clock.t += 0.5
    assert limiter.acquire("ip") == 0.0


def test_refused_requests_do_not_push_the_wait_further() -> None:
    clock = FakeMonotonic()
    limiter = TokenBucketLimiter(RateLimit(burst=1, per_s=1.0), clock)
    limiter.acquire("k")
    waits = [limiter.acquire("k") for _ in range(10)]
    assert waits == [pytest.approx(1.0)] * 10
    clock.t += 1.0
    assert limiter.acquire("k") == 0.0


def test_bucket_refills_to_burst_and_no_further() -> None:
    clock = FakeMonotonic()
    limiter = TokenBucketLimiter(RateLimit(burst=2, per_s=10.0), clock)
    clock.t += 3600
    assert [limiter.acquire("k") > 0 for _ in range(3)] == [False, False, True]


def test_keys_have_separate_buckets_and_memory_is_bounded() -> None:
    clock = FakeMonotonic()
    limiter = TokenBucketLimiter(RateLimit(burst=1, per_s=0.001), clock, max_keys=2)
    assert limiter.acquire("a") == 0.0 and limiter.acquire("b") == 0.0
    assert limiter.acquire("a") > 0 and limiter.acquire("b") > 0
    limiter.acquire("c")  # evicts the least recently used key ("a")
    assert limiter.acquire("a") == 0.0


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_render_counters_and_cumulative_histograms() -> None:
    metrics = HttpMetrics()
    metrics.observe(method="GET", route="/api/v1/health", status=200, duration_s=0.003)
    metrics.observe(method="GET", route="/api/v1/health", status=200, duration_s=0.2)
    metrics.observe(method="GET", route="/api/v1/health", status=429, duration_s=20.0)
    text = metrics.render()
    lines = text.splitlines()
    assert 'edgefabric_http_requests_total{method="GET",route="/api/v1/health",status="200"} 2' in lines
    assert 'edgefabric_http_requests_total{method="GET",route="/api/v1/health",status="429"} 1' in lines
    prefix = 'edgefabric_http_request_duration_seconds_bucket{method="GET",route="/api/v1/health",'
    assert f'{prefix}le="0.005"}} 1' in lines
    assert f'{prefix}le="0.25"}} 2' in lines
    assert f'{prefix}le="10.0"}} 2' in lines
    assert f'{prefix}le="+Inf"}} 3' in lines
    assert 'edgefabric_http_request_duration_seconds_count{method="GET",route="/api/v1/health"} 3' in lines
    assert "# TYPE edgefabric_http_request_duration_seconds histogram" in lines
    assert text.endswith("\n")


def test_metric_label_values_are_escaped() -> None:
    metrics = HttpMetrics()
    metrics.observe(method="GET", route='/a"b\\c\nd', status=200, duration_s=0.0)
    assert 'route="/a\\"b\\\\c\\nd"' in metrics.render()
