"""Batch-1 latency of loaded models for the compiler benchmark: wall clock in blocks, and CPU cost.

Two measurements, because a shared 2-vCPU box is rarely quiet:

- `time_blocks`: wall-clock time per call with the runtimes' `threads` (what a device sees). Each
  session is timed alone in a block (untimed warm-up, then up to `runs` calls or `block_max_s`),
  after a pause, in rounds whose order alternates, so that slow drifts in background load hit every
  variant alike. Reported as p50/p10/p90 over all calls and the lowest block median ("best block").
- `cpu_cost`: process CPU time per call (`time.process_time`) of a *one-thread* session: what the
  model costs to compute, unaffected by other processes taking the CPU away (a preempted call is not
  charged), though still by the caches they thrash. ORT with one intra-op thread runs in the calling
  thread; OpenVINO with `INFERENCE_NUM_THREADS=1` runs on one worker; both are charged to the process.

Ratios are always against the baseline measured the same way in the same process.
Every loop is bounded by a count and by time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np


class Runnable(Protocol):
    def run(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    threads: int
    runs: int
    p50_ms: float
    p10_ms: float
    p90_ms: float
    best_block_ms: float  # the lowest block median
    speedup: float  # baseline p50 / this p50: the headline ratio
    speedup_best_block: float  # baseline best block / this best block


class CpuCost(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    cpu_ms: float  # median process CPU time per call, one thread
    speedup: float  # baseline cpu_ms / this cpu_ms


@dataclass(frozen=True, slots=True)
class TimingPlan:
    rounds: int
    runs: int
    warmup: int
    pause_s: float
    block_max_s: float


@dataclass(slots=True)
class Blocks:
    samples_ms: list[float]
    block_medians_ms: list[float]


def time_blocks(
    sessions: dict[str, Runnable], feed: dict[str, Any], plan: TimingPlan, allows: Callable[[], bool]
) -> dict[str, Blocks]:
    """Wall-clock ms per call, one block per session per round, the order alternating by round."""
    timings = {key: Blocks([], []) for key in sessions}
    keys = list(sessions)
    for round_index in range(plan.rounds):
        for key in keys if round_index % 2 == 0 else keys[::-1]:
            if not allows():
                return timings
            session = sessions[key]
            time.sleep(plan.pause_s)
            for _ in range(plan.warmup):
                session.run(feed)
            block: list[float] = []
            deadline = time.perf_counter() + plan.block_max_s
            for _ in range(plan.runs):
                started = time.perf_counter()
                session.run(feed)
                block.append((time.perf_counter() - started) * 1000)
                if time.perf_counter() >= deadline:
                    break
            timings[key].samples_ms += block
            timings[key].block_medians_ms.append(statistics.median(block))
    return timings


def latency(blocks: Blocks | None, threads: int, baseline: Latency | None) -> Latency | None:
    if blocks is None or not blocks.samples_ms:
        return None
    p10, p90 = (float(q) for q in np.percentile(blocks.samples_ms, [10, 90]))
    p50 = statistics.median(blocks.samples_ms)
    best = min(blocks.block_medians_ms)
    return Latency(
        threads=threads,
        runs=len(blocks.samples_ms),
        p50_ms=round(p50, 3),
        p10_ms=round(p10, 3),
        p90_ms=round(p90, 3),
        best_block_ms=round(best, 3),
        speedup=round((baseline.p50_ms if baseline else p50) / p50, 2),
        speedup_best_block=round((baseline.best_block_ms if baseline else best) / best, 2),
    )


def cpu_cost(session: Runnable, feed: dict[str, Any], *, warmup: int, runs: int, max_s: float) -> list[float]:
    """Process CPU ms per call after `warmup` calls; at most `runs` calls or `max_s` of wall time."""
    for _ in range(warmup):
        session.run(feed)
    samples: list[float] = []
    deadline = time.perf_counter() + max_s
    for _ in range(runs):
        started = time.process_time()
        session.run(feed)
        samples.append((time.process_time() - started) * 1000)
        if time.perf_counter() >= deadline:
            break
    return samples


def cost(samples_ms: list[float], baseline: CpuCost | None) -> CpuCost | None:
    if not samples_ms:
        return None
    median = statistics.median(samples_ms)
    return CpuCost(
        runs=len(samples_ms),
        cpu_ms=round(median, 3),
        speedup=round((baseline.cpu_ms if baseline else median) / median, 2),
    )
