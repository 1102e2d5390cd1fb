"""Host latency of one artifact: batch-1 inference timed in its own block (never interleaved).

Interleaving runtimes in one loop made ORT INT8 timings erratic on 2 cores, so each artifact
is warmed up and then timed alone, bounded by a run count and a time budget.
"""

from __future__ import annotations

import time

import numpy as np

from hardware_profiles.runtimes import Feeds, InferenceSession
from protocols.manifest import LatencyStats


def measure_latency(
    session: InferenceSession, feed: Feeds, *, warmup_runs: int, runs: int, max_seconds: float = 20.0
) -> LatencyStats:
    """p50/p95 of `runs` timed calls after `warmup_runs`; stops early at `max_seconds`."""
    for _ in range(warmup_runs):
        session.run(feed)
    timings_ms: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(timings_ms) < runs and (not timings_ms or time.perf_counter() < deadline):
        started = time.perf_counter()
        session.run(feed)
        timings_ms.append((time.perf_counter() - started) * 1000)
    return LatencyStats(
        p50_ms=float(np.percentile(timings_ms, 50)),
        p95_ms=float(np.percentile(timings_ms, 95)),
        runs=len(timings_ms),
        measured_on=session.description,
    )
