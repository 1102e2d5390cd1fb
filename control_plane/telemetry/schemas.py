"""REST values of the telemetry API: time series, per-version summaries and per-device breakdowns.

Every rate and percentile is computed from whole records summed over the answer's window; a value
that cannot be computed (no requests, no latency histogram, no reference histogram) is null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Step = Literal["minute", "hour"]


class SeriesPoint(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    """Start of the bucket (UTC, aligned to the step); buckets without records are left out."""
    count: int
    error_count: int
    error_rate: float | None
    mean_latency_ms: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    shadow_agreement: float | None
    """Mean agreement of shadow records, weighted by their request counts."""


class TelemetrySeries(msgspec.Struct, frozen=True, kw_only=True):
    device: str | None
    model: str | None
    version: str | None
    step: Step
    since: datetime
    until: datetime
    points: list[SeriesPoint]


class VersionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Fleet aggregates of one model version over the window."""

    model: str
    version: str
    devices: int
    count: int
    error_count: int
    error_rate: float | None
    mean_latency_ms: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    shadow_agreement: float | None
    drift_psi: float | None
    """PSI of the summed output histogram against the release's reference histogram."""
    first_minute: datetime
    last_minute: datetime


class TelemetrySummary(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime
    items: list[VersionSummary]
    """By model, then version."""


class DeviceTelemetry(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    count: int
    error_count: int
    error_rate: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    last_minute: datetime
    evicted_count: int
    """Records the device reported dropping from its full queue before sending (all time)."""


class DeviceTelemetryPage(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime
    items: list[DeviceTelemetry]
    """By device id."""
    total: int
    limit: int
    offset: int
