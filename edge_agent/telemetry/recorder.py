"""Per-interval inference statistics, aggregated in memory until an interval closes.

One aggregate per (model, version, mode, interval start); `drain` turns every closed aggregate into a
`TelemetryRecord` and forgets it. No I/O: the clock is injected.

Invariants:
- Every request, failed or not, adds to `count` and to the latency histogram, so
  `latency_ms_buckets[-1] == count`. Buckets are cumulative, as `TelemetryRecord` documents:
  `latency_ms_buckets[i]` counts requests with latency <= `latency_ms_bounds[i]`, and the extra last
  bucket is +inf.
- `output_histogram[c]` counts requests whose top-1 class (or output bin) was `c`; it is as long as the
  largest class seen plus one.
- `input_mean[f]` / `input_std[f]` are the mean and population standard deviation, across requests, of
  the per-request input summary `f`; a value that is not finite is left out of feature `f`'s moments
  (a feature with no finite value reports 0.0 for both).
- `shadow_agreement` is the fraction of requests that reported agreement, or None if none did.
- Each drained record has a fresh `record_id`. A request recorded after its interval was drained (the
  clock went backwards) opens a new aggregate, so one interval can arrive as several records; consumers
  sum them.
- `record` and `drain` may be called from any thread.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, pairwise

from protocols.messages import RolloutMode, TelemetryRecord

DEFAULT_LATENCY_MS_BOUNDS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

_Key = tuple[float, str, str, RolloutMode]  # interval start (epoch seconds), model, version, mode


@dataclass(slots=True)
class _Aggregate:
    """Running statistics of one key; latency counts are per bucket here, cumulated on drain."""

    latency_counts: list[int]
    count: int = 0
    error_count: int = 0
    latency_ms_sum: float = 0.0
    output_counts: list[int] = field(default_factory=list)
    input_n: list[int] = field(default_factory=list)  # Welford, per input feature
    input_mean: list[float] = field(default_factory=list)
    input_m2: list[float] = field(default_factory=list)
    shadow_reported: int = 0
    shadow_agreed: int = 0

    def add_input_summary(self, summary: Sequence[float]) -> None:
        missing = len(summary) - len(self.input_n)
        if missing > 0:
            self.input_n.extend([0] * missing)
            self.input_mean.extend([0.0] * missing)
            self.input_m2.extend([0.0] * missing)
        for feature, value in enumerate(summary):
            if not math.isfinite(value):
                continue
            self.input_n[feature] += 1
            delta = value - self.input_mean[feature]
            self.input_mean[feature] += delta / self.input_n[feature]
            self.input_m2[feature] += delta * (value - self.input_mean[feature])

    def input_std(self) -> tuple[float, ...]:
        pairs = zip(self.input_n, self.input_m2, strict=True)
        return tuple(math.sqrt(m2 / n) if n else 0.0 for n, m2 in pairs)


class TelemetryRecorder:
    """Aggregates inference outcomes per model version, mode and interval; thread-safe."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        interval_s: float = 60.0,
        latency_ms_bounds: Sequence[float] = DEFAULT_LATENCY_MS_BOUNDS,
    ) -> None:
        bounds = tuple(float(b) for b in latency_ms_bounds)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"latency_ms_bounds must be finite and non-empty, got {bounds}")
        if any(lower >= upper for lower, upper in pairwise(bounds)):
            raise ValueError(f"latency_ms_bounds must be strictly increasing, got {bounds}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._clock = clock
        self.interval_s = float(interval_s)
        self.latency_ms_bounds = bounds
        self._aggregates: dict[_Key, _Aggregate] = {}
        self._lock = threading.Lock()

    def record(
        self,
        model: str,
        version: str,
        *,
        latency_ms: float,
        is_error: bool,
        top1: int | None = None,
        input_mean: Sequence[float] | None = None,
        mode: RolloutMode = "active",
        shadow_agreement: bool | None = None,
    ) -> None:
        """Count one request in the current interval.

        `top1` is the predicted class, or the output bin for a model without classes; `input_mean` is
        the cheap per-request summary of the input (e.g. the mean of each input tensor).
        """
        if not (math.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(f"latency_ms must be finite and >= 0, got {latency_ms}")
        if top1 is not None and top1 < 0:
            raise ValueError(f"top1 must be a class index >= 0, got {top1}")
        bucket = bisect.bisect_left(self.latency_ms_bounds, latency_ms)  # first bound >= latency
        with self._lock:
            key = (self._interval_start(self._clock()), model, version, mode)
            aggregate = self._aggregates.get(key)
            if aggregate is None:
                aggregate = _Aggregate(latency_counts=[0] * (len(self.latency_ms_bounds) + 1))
                self._aggregates[key] = aggregate
            aggregate.count += 1
            aggregate.error_count += is_error
            aggregate.latency_counts[bucket] += 1
            aggregate.latency_ms_sum += latency_ms
            if top1 is not None:
                if top1 >= len(aggregate.output_counts):
                    aggregate.output_counts.extend([0] * (top1 + 1 - len(aggregate.output_counts)))
                aggregate.output_counts[top1] += 1
            if input_mean is not None:
                aggregate.add_input_summary(input_mean)
            if shadow_agreement is not None:
                aggregate.shadow_reported += 1
                aggregate.shadow_agreed += shadow_agreement

    def drain(self, now: float | None = None, *, force: bool = False) -> list[TelemetryRecord]:
        """Records of every interval closed by `now` (default: the clock), or of all when `force`.

        Drained aggregates are forgotten. Records come ordered by interval, model, version and mode.
        """
        with self._lock:
            cutoff = self._clock() if now is None else now
            closed = sorted(key for key in self._aggregates if force or key[0] + self.interval_s <= cutoff)
            drained = [(key, self._aggregates.pop(key)) for key in closed]
        return [self._to_record(key, aggregate) for key, aggregate in drained]

    def _interval_start(self, at: float) -> float:
        return math.floor(at / self.interval_s) * self.interval_s

    def _to_record(self, key: _Key, aggregate: _Aggregate) -> TelemetryRecord:
        start, model, version, mode = key
        return TelemetryRecord(
            record_id=uuid.uuid4().hex,
            model=model,
            version=version,
            minute_start=datetime.fromtimestamp(start, UTC),
            count=aggregate.count,
            error_count=aggregate.error_count,
            latency_ms_bounds=self.latency_ms_bounds,
            latency_ms_buckets=tuple(accumulate(aggregate.latency_counts)),
            latency_ms_sum=aggregate.latency_ms_sum,
            output_histogram=tuple(aggregate.output_counts),
            input_mean=tuple(aggregate.input_mean),
            input_std=aggregate.input_std(),
            mode=mode,
            shadow_agreement=(
                aggregate.shadow_agreed / aggregate.shadow_reported if aggregate.shadow_reported else None
            ),
        )
