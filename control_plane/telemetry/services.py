"""Reading telemetry: time series, fleet summaries per model version, per-device breakdowns.

Invariants:
- Every answer covers a window `since <= minute_start < until`; a missing `until` is now, a missing
  `since` is a default span before `until`; a naive time is UTC. A window that is empty, reversed or
  longer than the route's maximum is a 422, so no query scans an unbounded range.
- Ids in filters follow the wire rules (`protocols.identifiers`); anything else is a 422.
- Percentiles come from the summed latency histograms and drift from the summed output histogram
  (`histograms`); drift is null when the release's reference histogram is unknown.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import msgspec
from sqlite_utils import Database

from control_plane.clock import Clock
from control_plane.errors import InvalidArgumentError
from control_plane.pagination import PageRequest
from control_plane.telemetry.histograms import percentile_ms, psi
from control_plane.telemetry.repositories import Aggregate, RecordFilter, TelemetryRepository
from control_plane.telemetry.schemas import (
    DeviceTelemetry,
    DeviceTelemetryPage,
    SeriesPoint,
    Step,
    TelemetrySeries,
    TelemetrySummary,
    VersionSummary,
)
from protocols.identifiers import DeviceId, ModelName, Version

STEP_S: dict[Step, int] = {"minute": 60, "hour": 3600}
SERIES_DEFAULT_WINDOW: dict[Step, timedelta] = {"minute": timedelta(hours=1), "hour": timedelta(days=1)}
SERIES_MAX_WINDOW: dict[Step, timedelta] = {"minute": timedelta(days=1), "hour": timedelta(days=31)}
"""At most 1440 minute points or 744 hour points."""
SUMMARY_DEFAULT_WINDOW = timedelta(days=1)
SUMMARY_MAX_WINDOW = timedelta(days=31)


class ReferenceHistograms(Protocol):
    """The output histogram a release was validated with, or None when unknown."""

    def __call__(self, model: str, version: str) -> Sequence[int] | None: ...


class TelemetryService:
    def __init__(self, db: Database, clock: Clock, *, references: ReferenceHistograms | None = None) -> None:
        self._records = TelemetryRepository(db)
        self._clock = clock
        self._references = references

    def series(
        self,
        *,
        step: Step,
        device: str | None = None,
        model: str | None = None,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> TelemetrySeries:
        """One point per `step` bucket that has records, oldest first."""
        since, until = self._window(since, until, SERIES_DEFAULT_WINDOW[step], SERIES_MAX_WINDOW[step])
        step_s = STEP_S[step]
        where = _filter(since, until, device=device, model=model, version=version)
        buckets = self._records.aggregate([f"(minute_start_s / {step_s}) * {step_s}"], where)
        points = [
            SeriesPoint(
                start=_time(start_s),
                count=a.request_count,
                error_count=a.error_count,
                error_rate=_error_rate(a),
                mean_latency_ms=_mean_latency_ms(a),
                p50_latency_ms=percentile_ms(a.latency, 0.5),
                p95_latency_ms=percentile_ms(a.latency, 0.95),
                shadow_agreement=a.shadow_agreement,
            )
            for (start_s,), a in sorted(buckets.items())
        ]
        return TelemetrySeries(
            device=device, model=model, version=version, step=step, since=since, until=until, points=points
        )

    def summary(
        self,
        *,
        model: str | None = None,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> TelemetrySummary:
        """Fleet aggregates per model version with records in the window."""
        since, until = self._window(since, until, SUMMARY_DEFAULT_WINDOW, SUMMARY_MAX_WINDOW)
        where = _filter(since, until, model=model, version=version)
        versions = self._records.aggregate(["model", "version"], where, outputs=True)
        items = [
            VersionSummary(
                model=name,
                version=release,
                devices=a.device_count,
                count=a.request_count,
                error_count=a.error_count,
                error_rate=_error_rate(a),
                mean_latency_ms=_mean_latency_ms(a),
                p50_latency_ms=percentile_ms(a.latency, 0.5),
                p95_latency_ms=percentile_ms(a.latency, 0.95),
                shadow_agreement=a.shadow_agreement,
                drift_psi=self._drift(name, release, a.outputs),
                first_minute=_time(a.first_minute_s),
                last_minute=_time(a.last_minute_s),
            )
            for (name, release), a in sorted(versions.items())
        ]
        return TelemetrySummary(since=since, until=until, items=items)

    def devices(
        self,
        page: PageRequest,
        *,
        model: str | None = None,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> DeviceTelemetryPage:
        """Per-device aggregates of the devices with records in the window, by device id."""
        since, until = self._window(since, until, SUMMARY_DEFAULT_WINDOW, SUMMARY_MAX_WINDOW)
        where = _filter(since, until, model=model, version=version)
        device_ids, total = self._records.device_page(where, limit=page.limit, offset=page.offset)
        per_device = (
            self._records.aggregate(["device_id"], dataclasses.replace(where, device_ids=tuple(device_ids)))
            if device_ids
            else {}
        )
        evicted = self._records.evicted_counts(device_ids)
        items = [
            DeviceTelemetry(
                device_id=device_id,
                count=a.request_count,
                error_count=a.error_count,
                error_rate=_error_rate(a),
                p50_latency_ms=percentile_ms(a.latency, 0.5),
                p95_latency_ms=percentile_ms(a.latency, 0.95),
                last_minute=_time(a.last_minute_s),
                evicted_count=evicted.get(device_id, 0),
            )
            for device_id in device_ids
            for a in [per_device[(device_id,)]]
        ]
        return DeviceTelemetryPage(
            since=since, until=until, items=items, total=total, limit=page.limit, offset=page.offset
        )

    def _drift(self, model: str, version: str, outputs: tuple[int, ...]) -> float | None:
        if self._references is None or not outputs:
            return None
        reference = self._references(model, version)
        return None if reference is None else psi(outputs, reference)

    def _window(
        self, since: datetime | None, until: datetime | None, default: timedelta, maximum: timedelta
    ) -> tuple[datetime, datetime]:
        try:
            until = _utc(until) if until is not None else self._clock.now()
            since = _utc(since) if since is not None else until - default
        except OverflowError as e:  # e.g. 0001-01-01 minus the default span, or 9999-12-31T23:59-01:00
            raise InvalidArgumentError("since", "the window is outside the representable times") from e
        if since >= until:
            raise InvalidArgumentError("since", f"must be before until ({until.isoformat()})")
        if until - since > maximum:
            raise InvalidArgumentError("since", f"the window is longer than the maximum of {maximum}")
        return since, until


def _filter(
    since: datetime,
    until: datetime,
    *,
    device: str | None = None,
    model: str | None = None,
    version: str | None = None,
) -> RecordFilter:
    """Records with `since <= minute_start < until` (minute starts are whole seconds)."""
    return RecordFilter(
        since_s=math.ceil(since.timestamp()),
        until_s=math.ceil(until.timestamp()),
        device_ids=() if device is None else (_checked(device, DeviceId, "device"),),
        model=None if model is None else _checked(model, ModelName, "model"),
        version=None if version is None else _checked(version, Version, "version"),
    )


def _checked(value: str, kind: object, field: str) -> str:
    try:
        return str(msgspec.convert(value, kind))
    except msgspec.ValidationError as e:
        raise InvalidArgumentError(field, str(e)) from e


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _time(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _error_rate(a: Aggregate) -> float | None:
    return a.error_count / a.request_count if a.request_count else None


def _mean_latency_ms(a: Aggregate) -> float | None:
    return a.latency_ms_sum / a.request_count if a.request_count else None
