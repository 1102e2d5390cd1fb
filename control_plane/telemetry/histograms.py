"""Latency percentiles and output drift from summed histograms: plain functions over plain values.

Latency histograms arrive cumulative, as on the wire (`TelemetryRecord`): `buckets[i]` counts requests
with latency <= `bounds[i]`, and one extra last bucket is +inf, so `buckets[-1]` is the total. Summing
cumulative histograms that share their bounds gives the cumulative histogram of the sum.

Invariants:
- `LatencyHistogram.counts` is per bucket (not cumulative) and has one entry more than `bounds`.
- Histograms with the same bounds merge exactly (element-wise sum). Histograms with different bounds
  merge onto the union of their bounds, each bucket's count placed at its own upper bound: exact for
  a fleet on one set of bounds (the agent's default), an approximation across differently configured
  devices.
- A percentile is interpolated linearly inside the bucket that holds its rank, the first bucket
  starting at 0 ms (as Prometheus' `histogram_quantile` does). A rank in the +inf bucket answers the
  highest finite bound, a lower bound of the true value. No requests: None.
- PSI = sum((o - r) * ln(o / r)) over the bins of the two histograms as proportions; a bin that is
  empty on either side counts `epsilon` instead of 0, so the sum stays finite. A shorter histogram is
  padded with zeros (a class never seen was seen 0 times). Either side without any count: None.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

PSI_EPSILON = 1e-4
"""Proportion that stands in for an empty bin in `psi` (the usual choice; ln(1e-4) is about -9.2)."""


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    """Per bucket: `counts[i]` in (`bounds[i - 1]`, `bounds[i]`], the last one above `bounds[-1]`."""

    @property
    def total(self) -> int:
        return sum(self.counts)


def latency_histogram_problem(bounds: Sequence[float], buckets: Sequence[int]) -> str | None:
    """Why a wire histogram (`bounds`, cumulative `buckets`) cannot be used, or None if it can.

    Both empty is a record without latency data, and fine. Runs once per ingested record, so the
    bounds (the same for a whole fleet, as a rule) are checked once per distinct tuple.
    """
    if not bounds and not buckets:
        return None
    if len(buckets) != len(bounds) + 1:
        return f"{len(buckets)} latency buckets for {len(bounds)} bounds (expected bounds + 1)"
    problem = _bounds_problem(tuple(bounds))
    if problem is None and any(map(operator.gt, buckets, buckets[1:])):
        return "cumulative latency buckets must not decrease"
    return problem


@functools.lru_cache(maxsize=64)
def _bounds_problem(bounds: tuple[float, ...]) -> str | None:
    if not all(math.isfinite(b) for b in bounds):
        return "latency bounds must be finite"
    if any(lower >= upper for lower, upper in pairwise(bounds)):
        return "latency bounds must be strictly increasing"
    return None


def from_cumulative(bounds: Sequence[float], buckets: Sequence[int]) -> LatencyHistogram:
    """The per-bucket histogram of a valid cumulative one (see `latency_histogram_problem`)."""
    return LatencyHistogram(
        bounds=tuple(bounds), counts=tuple(now - before for before, now in pairwise([0, *buckets]))
    )


def merge(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram | None:
    """The sum of `histograms` (None if there are none); see the module invariant for mixed bounds."""
    items = list(histograms)
    if not items:
        return None
    bounds = items[0].bounds
    if all(h.bounds == bounds for h in items):
        return LatencyHistogram(
            bounds=bounds, counts=tuple(map(sum, zip(*(h.counts for h in items), strict=True)))
        )
    union = sorted({b for h in items for b in h.bounds})
    position = {bound: i for i, bound in enumerate(union)}
    counts = [0] * (len(union) + 1)
    for h in items:
        for i, count in enumerate(h.counts):
            counts[position[h.bounds[i]] if i < len(h.bounds) else len(union)] += count
    return LatencyHistogram(bounds=tuple(union), counts=tuple(counts))


def percentile_ms(histogram: LatencyHistogram | None, q: float) -> float | None:
    """The `q` quantile (0 < q <= 1) of `histogram`, in its bounds' unit (ms); None without requests."""
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    if histogram is None or not histogram.bounds or histogram.total == 0:
        return None
    rank = q * histogram.total
    cumulative = list(accumulate(histogram.counts))
    bucket = next(i for i, reached in enumerate(cumulative) if reached >= rank)
    if bucket == len(histogram.bounds):  # the +inf bucket
        return histogram.bounds[-1]
    upper = histogram.bounds[bucket]
    lower = histogram.bounds[bucket - 1] if bucket > 0 else min(0.0, upper)
    below = cumulative[bucket - 1] if bucket > 0 else 0
    return lower + (upper - lower) * (rank - below) / histogram.counts[bucket]


def psi(observed: Sequence[int], reference: Sequence[int], *, epsilon: float = PSI_EPSILON) -> float | None:
    """Population stability index of `observed` against `reference` (bin counts); None if either is empty."""
    observed_total, reference_total = sum(observed), sum(reference)
    if observed_total <= 0 or reference_total <= 0:
        return None
    size = max(len(observed), len(reference))
    index = 0.0
    for i in range(size):
        o = (observed[i] if i < len(observed) else 0) / observed_total or epsilon
        r = (reference[i] if i < len(reference) else 0) / reference_total or epsilon
        index += (o - r) * math.log(o / r)
    return index
