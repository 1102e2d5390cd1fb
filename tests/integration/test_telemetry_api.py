"""The telemetry API over a real SQLite data dir: series, summary and per-device numbers checked
against hand-computed values, and bad windows answered as JSON 400/422.

Records go in through `TelemetryRepository.insert`, the write path of the ingest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from control_plane.app import Services, create_app
from control_plane.audit.schemas import Actor
from control_plane.auth.schemas import CreateTokenRequest
from control_plane.auth.tokens import Role
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.server import open_data_dir
from control_plane.telemetry.repositories import TelemetryRepository
from control_plane.telemetry.services import TelemetryService
from protocols.messages import TelemetryBatch, TelemetryRecord

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
BOUNDS = (10.0, 20.0, 50.0)
REFERENCES = {("digits", "1"): (1, 1)}


class FixedClock:
    def now(self) -> datetime:
        return NOW

    def monotonic(self) -> float:
        return 1000.0


def at(hour: int, minute: int) -> datetime:
    return datetime(2030, 1, 1, hour, minute, tzinfo=UTC)


def record(
    record_id: str, minute: datetime, count: int, buckets: Sequence[int], **fields: Any
) -> TelemetryRecord:
    values: dict[str, Any] = {
        "model": "digits",
        "version": "1",
        "error_count": 0,
        "latency_ms_bounds": BOUNDS,
        **fields,
    }
    return TelemetryRecord(
        record_id=record_id, minute_start=minute, count=count, latency_ms_buckets=tuple(buckets), **values
    )


# Latency per bucket: (<= 10, (10, 20], (20, 50], > 50) ms.
BATCHES = [
    TelemetryBatch(
        device_id="dev-a",
        batch_id="a-1",
        records=(
            record("a1", at(10, 0), 10, (0, 10, 10, 10), error_count=1, latency_ms_sum=150.0,
                   output_histogram=(5, 5)),
            record("a2", at(10, 1), 10, (10, 10, 10, 10), latency_ms_sum=50.0, output_histogram=(10, 0)),
        ),
    ),
    TelemetryBatch(
        device_id="dev-b",
        batch_id="b-1",
        evicted_count=3,
        records=(
            record("b1", at(10, 0), 20, (0, 0, 20, 20), error_count=3, latency_ms_sum=700.0,
                   output_histogram=(0, 20)),
            record("b2", at(11, 30), 4, (4, 4, 4, 4), version="2", mode="shadow", shadow_agreement=0.75,
                   latency_ms_sum=8.0, output_histogram=(4, 0)),
        ),
    ),
]  # fmt: skip


@dataclasses.dataclass
class Client:
    http: TestClient[Any]
    viewer: dict[str, str]

    def get(self, path: str, **params: str | int) -> httpx.Response:
        return self.http.get(path, params=params, headers=self.viewer)

    def ok(self, path: str, **params: str | int) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    generous = RateLimit(burst=10_000, per_s=10_000.0)
    config = ControlPlaneConfig(
        data_dir=str(tmp_path / "data"),
        rate_limit_per_ip=generous,
        rate_limit_per_identity=generous,
        rate_limit_sensitive=generous,
    )
    db = open_data_dir(config)
    clock = FixedClock()
    services = Services.build(config, db, clock)
    services = dataclasses.replace(
        services, telemetry=TelemetryService(db, clock, references=lambda m, v: REFERENCES.get((m, v)))
    )
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert admin is not None
    viewer = services.tokens.create(
        Actor(id=admin.id, name=admin.name), CreateTokenRequest(name="viewer", role=Role.VIEWER)
    )
    TelemetryRepository(db).insert(BATCHES, received_at=NOW)
    with TestClient(create_app(config, services, clock=clock)) as http:
        yield Client(http, {"Authorization": f"Bearer {viewer.token}"})
    db.close()


def test_device_series_by_minute_matches_hand_computed_buckets(client: Client) -> None:
    series = client.ok(
        "/api/v1/telemetry/series",
        device="dev-a",
        model="digits",
        version="1",
        since="2030-01-01T10:00:00Z",
        until="2030-01-01T10:02:00Z",
    )
    assert series["step"] == "minute" and series["device"] == "dev-a"
    first, second = series["points"]
    assert first == {
        "start": "2030-01-01T10:00:00Z",
        "count": 10,
        "error_count": 1,
        "error_rate": 0.1,
        "mean_latency_ms": 15.0,
        "p50_latency_ms": 15.0,  # rank 5 of 10, all in (10, 20]
        "p95_latency_ms": 19.5,
        "shadow_agreement": None,
    }
    assert (second["start"], second["count"], second["error_rate"]) == ("2030-01-01T10:01:00Z", 10, 0.0)
    assert (second["p50_latency_ms"], second["p95_latency_ms"]) == (5.0, 9.5)  # all <= 10 ms


def test_until_is_exclusive_and_a_naive_time_is_utc(client: Client) -> None:
    series = client.ok(
        "/api/v1/telemetry/series", device="dev-a", since="2030-01-01T10:00:00", until="2030-01-01T10:01:00"
    )
    assert [p["start"] for p in series["points"]] == ["2030-01-01T10:00:00Z"]
    assert series["since"] == "2030-01-01T10:00:00Z"


def test_fleet_series_by_hour_sums_devices_before_taking_percentiles(client: Client) -> None:
    series = client.ok(
        "/api/v1/telemetry/series",
        model="digits",
        version="1",
        step="hour",
        since="2030-01-01T10:00:00Z",
        until="2030-01-01T12:00:00Z",
    )
    (point,) = series["points"]
    # Per bucket 10 + 10 + 20 requests: cumulative 10, 20, 40 of 40.
    assert point["start"] == "2030-01-01T10:00:00Z"
    assert (point["count"], point["error_count"], point["error_rate"]) == (40, 4, 0.1)
    assert point["mean_latency_ms"] == 22.5
    assert point["p50_latency_ms"] == pytest.approx(20.0)  # rank 20: top of (10, 20]
    assert point["p95_latency_ms"] == pytest.approx(47.0)  # rank 38: 18 of 20 into (20, 50]


def test_default_series_window_is_the_last_hour(client: Client) -> None:
    series = client.ok("/api/v1/telemetry/series")
    assert (series["since"], series["until"]) == ("2030-01-01T11:00:00Z", "2030-01-01T12:00:00Z")
    assert [(p["start"], p["count"], p["shadow_agreement"]) for p in series["points"]] == [
        ("2030-01-01T11:30:00Z", 4, 0.75)
    ]


def test_summary_gives_fleet_aggregates_and_drift_per_model_version(client: Client) -> None:
    summary = client.ok("/api/v1/telemetry/summary", since="2030-01-01T10:00:00Z")
    v1, v2 = summary["items"]
    assert {k: v1[k] for k in ("model", "version", "devices", "count", "error_count", "error_rate")} == {
        "model": "digits",
        "version": "1",
        "devices": 2,
        "count": 40,
        "error_count": 4,
        "error_rate": 0.1,
    }
    assert (v1["p50_latency_ms"], v1["p95_latency_ms"]) == (pytest.approx(20.0), pytest.approx(47.0))
    # Outputs (15, 25) against the reference (1, 1):
    # (0.375 - 0.5) ln(0.375 / 0.5) + (0.625 - 0.5) ln(0.625 / 0.5)
    assert v1["drift_psi"] == pytest.approx(0.06385320297074884)
    assert (v1["first_minute"], v1["last_minute"]) == ("2030-01-01T10:00:00Z", "2030-01-01T10:01:00Z")
    assert (v2["version"], v2["devices"], v2["count"], v2["error_rate"]) == ("2", 1, 4, 0.0)
    assert (v2["shadow_agreement"], v2["drift_psi"]) == (0.75, None)  # no reference for version 2
    assert (v2["p50_latency_ms"], v2["p95_latency_ms"]) == (5.0, 9.5)


def test_summary_filters_by_model_version(client: Client) -> None:
    summary = client.ok("/api/v1/telemetry/summary", model="digits", version="2")
    assert [(i["version"], i["count"]) for i in summary["items"]] == [("2", 4)]
    assert client.ok("/api/v1/telemetry/summary", model="other")["items"] == []


def test_devices_are_paged_with_their_own_aggregates_and_evictions(client: Client) -> None:
    page = client.ok("/api/v1/telemetry/devices", since="2030-01-01T10:00:00Z", model="digits")
    assert (page["total"], page["limit"], page["offset"]) == (2, 50, 0)
    a, b = page["items"]
    assert (a["device_id"], a["count"], a["error_rate"], a["evicted_count"]) == ("dev-a", 20, 0.05, 0)
    assert (a["p50_latency_ms"], a["p95_latency_ms"]) == (pytest.approx(10.0), pytest.approx(19.0))
    assert a["last_minute"] == "2030-01-01T10:01:00Z"
    # dev-b: per bucket (4, 0, 20, 0) over both versions.
    assert (b["device_id"], b["count"], b["error_rate"], b["evicted_count"]) == ("dev-b", 24, 0.125, 3)
    assert (b["p50_latency_ms"], b["p95_latency_ms"]) == (pytest.approx(32.0), pytest.approx(48.2))
    second = client.ok("/api/v1/telemetry/devices", since="2030-01-01T10:00:00Z", limit=1, offset=1)
    assert [d["device_id"] for d in second["items"]] == ["dev-b"] and second["total"] == 2


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("series", {"since": "yesterday"}, 400, "invalid_request"),
        ("series", {"until": "2030-13-01T00:00:00Z"}, 400, "invalid_request"),
        ("series", {"step": "second"}, 400, "invalid_request"),
        ("series", {"until": "0.5"}, 400, "invalid_request"),  # epoch seconds are not RFC 3339
        ("summary", {"until": "0001-01-01T00:00:00Z"}, 422, "invalid_argument"),
        ("summary", {"since": "9999-12-31T23:59:00-01:00"}, 422, "invalid_argument"),
        (
            "series",
            {"since": "2030-01-01T12:00:00Z", "until": "2030-01-01T11:00:00Z"},
            422,
            "invalid_argument",
        ),
        ("series", {"since": "2029-12-30T00:00:00Z"}, 422, "invalid_argument"),  # > 1 day of minutes
        ("series", {"step": "hour", "since": "2029-11-01T00:00:00Z"}, 422, "invalid_argument"),
        ("series", {"device": "no/such device"}, 422, "invalid_argument"),
        ("summary", {"since": "2029-01-01T00:00:00Z"}, 422, "invalid_argument"),
        ("summary", {"model": "a.b"}, 422, "invalid_argument"),
        (
            "summary",
            {"until": "2030-01-01T12:00:00Z", "since": "2030-01-01T12:00:00Z"},
            422,
            "invalid_argument",
        ),
        ("devices", {"limit": 0}, 400, "invalid_request"),
        ("devices", {"version": "-1"}, 422, "invalid_argument"),
    ],
)
def test_bad_windows_and_filters_are_json_4xx(
    client: Client, path: str, params: dict[str, str | int], status: int, code: str
) -> None:
    response = client.get(f"/api/v1/telemetry/{path}", **params)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"]
