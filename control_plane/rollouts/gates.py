"""A wave's gates: plain functions from counts and telemetry aggregates to a decision with its numbers.

Every gate answers a `GateResult`: `passed` or `failed` (value against threshold), `waiting` (not
enough evidence yet: never a pass), or `skipped` (the gate is off, or the value cannot be measured;
the reason says which). A wave passes only when no gate failed and none is waiting.

Invariants:
- Install gate: the ratio is installed / (installed + failed); skipped devices do not count. It
  fails as soon as the devices still waiting could no longer lift the ratio to the threshold, and
  passes only once no device is waiting.
- Telemetry gates wait until the soak time has passed and the new version has `min_requests`
  requests in the window; only then are they compared, each against its own threshold.
- Latency regression compares p95 with the baseline version's over the same window; a baseline
  with fewer than `min_requests` requests (or none) cannot be compared, and the gate is skipped.
- Shadow agreement is a gate in shadow mode only; the latency budget is a fixed ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.rollouts.schemas import GateResult, Gates, GateStatus
from protocols.messages import RolloutMode

INSTALL_GATE = "install_success_ratio"


@dataclass(frozen=True, slots=True)
class InstallCounts:
    installed: int
    failed: int
    skipped: int
    waiting: int
    """Assigned (or about to be) and not answered yet."""


@dataclass(frozen=True, slots=True)
class VersionTelemetry:
    """Aggregates of one model version over the gate's window (None: not measurable)."""

    version: str
    request_count: int
    error_rate: float | None
    p95_latency_ms: float | None
    drift_psi: float | None
    shadow_agreement: float | None


@dataclass(frozen=True, slots=True)
class GateDecision:
    status: GateStatus
    """`passed`, `failed` or `waiting` (never `skipped`)."""
    results: tuple[GateResult, ...]


def decide(results: Sequence[GateResult]) -> GateDecision:
    statuses = {result.status for result in results}
    status: GateStatus = (
        "failed" if "failed" in statuses else "waiting" if "waiting" in statuses else "passed"
    )
    return GateDecision(status=status, results=tuple(results))


def install_gate(counts: InstallCounts, min_ratio: float) -> GateResult:
    counted = counts.installed + counts.failed
    ratio = counts.installed / counted if counted else None
    numbers = f"{counts.installed} installed, {counts.failed} failed, {counts.skipped} skipped"
    if counts.waiting:
        best = (counts.installed + counts.waiting) / (counted + counts.waiting)
        if best < min_ratio:
            return _result(
                INSTALL_GATE, "failed", ratio, min_ratio, f"{numbers}: at best {best:.3f} with the rest"
            )
        return _result(INSTALL_GATE, "waiting", ratio, min_ratio, f"{numbers}, {counts.waiting} waiting")
    if ratio is None:
        return _result(INSTALL_GATE, "passed", None, min_ratio, f"{numbers}: no device counted")
    status: GateStatus = "passed" if ratio >= min_ratio else "failed"
    return _result(INSTALL_GATE, status, ratio, min_ratio, numbers)


def telemetry_gates(
    gates: Gates,
    *,
    mode: RolloutMode,
    new: VersionTelemetry,
    baseline: VersionTelemetry | None,
    latency_budget_ms: float | None,
    soak_elapsed_s: float,
) -> list[GateResult]:
    """The telemetry gates of a soaking wave (see the module invariants)."""
    checks = {
        "p95_latency_budget": (latency_budget_ms if gates.check_latency_budget else None, False),
        "latency_regression_pct": (gates.max_latency_regression_pct, False),
        "error_rate": (gates.max_error_rate, False),
        "drift_psi": (gates.max_drift_psi, False),
        "shadow_agreement": (gates.min_shadow_agreement if mode == "shadow" else None, True),
    }
    results: list[GateResult] = []
    for gate, (threshold, is_minimum) in checks.items():
        if threshold is None:
            results.append(_result(gate, "skipped", None, None, _why_off(gate, gates, mode)))
        elif soak_elapsed_s < gates.soak_s:
            reason = f"soaking: {soak_elapsed_s:.0f} of {gates.soak_s:.0f} s"
            results.append(_result(gate, "waiting", None, threshold, reason))
        elif new.request_count < gates.min_requests:
            reason = f"{new.request_count} of {gates.min_requests} requests of version {new.version}"
            results.append(_result(gate, "waiting", None, threshold, reason))
        else:
            value, unmeasured = _measure(gate, new, baseline, gates.min_requests)
            if value is None:
                status: GateStatus = "waiting" if gate == "shadow_agreement" else "skipped"
                results.append(_result(gate, status, None, threshold, unmeasured))
            else:
                is_ok = value >= threshold if is_minimum else value <= threshold
                comparison = ">=" if is_minimum else "<="
                reason = f"{value:.4g} {comparison} {threshold:.4g}" + ("" if is_ok else ": no")
                results.append(_result(gate, "passed" if is_ok else "failed", value, threshold, reason))
    return results


def _measure(
    gate: str, new: VersionTelemetry, baseline: VersionTelemetry | None, min_requests: int
) -> tuple[float | None, str]:
    """The gate's value (None: not measurable) and why it is not measurable."""
    if new.request_count == 0 and gate != "latency_regression_pct":
        return None, f"no requests of version {new.version} in the window"
    if gate == "p95_latency_budget":
        return new.p95_latency_ms, "no latency histogram in the telemetry"
    if gate == "error_rate":
        return new.error_rate, "no error rate in the telemetry"
    if gate == "drift_psi":
        return new.drift_psi, "no reference histogram for the release, or no outputs recorded"
    if gate == "shadow_agreement":
        return new.shadow_agreement, "no shadow agreement reported yet"
    if baseline is None:
        return None, "no baseline version to compare with"
    if baseline.request_count < max(min_requests, 1) or baseline.p95_latency_ms is None:
        return (
            None,
            f"baseline version {baseline.version} has {baseline.request_count} requests in the window",
        )
    if new.p95_latency_ms is None or baseline.p95_latency_ms <= 0:
        return None, "no p95 latency to compare"
    regression_pct = (new.p95_latency_ms - baseline.p95_latency_ms) / baseline.p95_latency_ms * 100.0
    return regression_pct, ""


def _why_off(gate: str, gates: Gates, mode: RolloutMode) -> str:
    if gate == "p95_latency_budget" and gates.check_latency_budget:
        return "no latency budget known for the targeted profiles"
    if gate == "shadow_agreement" and mode != "shadow" and gates.min_shadow_agreement is not None:
        return "only in shadow mode"
    return "off"


def _result(
    gate: str, status: GateStatus, value: float | None, threshold: float | None, reason: str
) -> GateResult:
    return GateResult(gate=gate, status=status, value=value, threshold=threshold, reason=reason)
