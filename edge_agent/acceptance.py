"""The on-device acceptance test: the artifact, loaded in this device's runtime, must reproduce
its golden outputs within tolerance and meet the latency budget before it may serve.

The session opened here is handed to the server when the test passes, so the model is loaded once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import AcceptanceFailedError
from edge_agent.store import InstalledModel
from hardware_profiles.runtimes import InferenceSession, open_session, settings_from_manifest
from model_compiler.golden import read_golden

WARMUP_RUNS = 3
TIMED_RUNS = 30


@dataclass(frozen=True, slots=True)
class AcceptanceResult:
    session: InferenceSession
    max_abs_error: float
    p95_latency_ms: float


def run_acceptance(installed: InstalledModel, *, threads: int | None = None) -> AcceptanceResult:
    """Raise `AcceptanceFailedError` (or a runtime error) unless the artifact passes on this device."""
    manifest = installed.manifest

    def refuse(reason: str) -> AcceptanceFailedError:
        return AcceptanceFailedError(manifest.model, manifest.version, manifest.hw_profile, reason)

    session = open_session(
        installed.directory / manifest.model_file, settings_from_manifest(manifest, threads=threads)
    )
    inputs, expected = read_golden(installed.directory / manifest.acceptance.golden_file)
    samples = len(next(iter(inputs.values())))
    worst = 0.0
    for index in range(samples):
        feed = {name: array[index : index + 1] for name, array in inputs.items()}
        produced = session.run(feed)
        for name, golden in expected.items():
            if name not in produced:
                raise refuse(f"output {name!r} missing")
            got = np.asarray(produced[name], dtype=np.float64)
            want = golden[index : index + 1].astype(np.float64)
            if got.shape != want.shape or not np.isfinite(got).all():
                raise refuse(f"output {name!r} has shape {got.shape} or non-finite values")
            worst = max(worst, float(np.abs(got - want).max()))
    if worst > manifest.acceptance.max_abs_error:
        raise refuse(f"golden outputs off by {worst:.4g} > {manifest.acceptance.max_abs_error:.4g}")
    first = {name: array[:1] for name, array in inputs.items()}
    for _ in range(WARMUP_RUNS):
        session.run(first)
    timings = []
    for _ in range(TIMED_RUNS):
        started = time.perf_counter()
        session.run(first)
        timings.append((time.perf_counter() - started) * 1000)
    p95 = float(np.percentile(timings, 95))
    if p95 > manifest.acceptance.p95_latency_ms:
        raise refuse(f"p95 latency {p95:.2f} ms > budget {manifest.acceptance.p95_latency_ms} ms")
    return AcceptanceResult(session=session, max_abs_error=worst, p95_latency_ms=p95)
