"""Rollout gates (`control_plane.rollouts.gates`): every gate on both sides of its threshold, missing
data, waiting for the soak and for requests, and regression against the baseline version."""

from __future__ import annotations

import pytest

from control_plane.rollouts.gates import (
    InstallCounts,
    VersionTelemetry,
    decide,
    install_gate,
    telemetry_gates,
)
from control_plane.rollouts.schemas import GateResult, Gates

ALL_ON = Gates(
    min_install_success_ratio=0.9,
    max_latency_regression_pct=20.0,
    max_error_rate=0.01,
    max_drift_psi=0.2,
    min_shadow_agreement=0.95,
    soak_s=60.0,
    min_requests=100,
)


def telemetry(version: str = "2", **fields: float | int | None) -> VersionTelemetry:
    values: dict[str, float | int | None] = {
        "request_count": 500,
        "error_rate": 0.001,
        "p95_latency_ms": 10.0,
        "drift_psi": 0.05,
        "shadow_agreement": 0.99,
    }
    values.update(fields)
    return VersionTelemetry(version=version, **values)  # type: ignore[arg-type]


def evaluate(
    new: VersionTelemetry,
    *,
    gates: Gates = ALL_ON,
    baseline: VersionTelemetry | None = None,
    mode: str = "shadow",
    budget_ms: float | None = 50.0,
    soak_elapsed_s: float = 61.0,
) -> dict[str, GateResult]:
    results = telemetry_gates(
        gates,
        mode=mode,  # type: ignore[arg-type]
        new=new,
        baseline=telemetry("1") if baseline is None else baseline,
        latency_budget_ms=budget_ms,
        soak_elapsed_s=soak_elapsed_s,
    )
    return {r.gate: r for r in results}


# --- install gate --------------------------------------------------------------------------------


def test_install_gate_passes_at_the_threshold_and_fails_just_below() -> None:
    assert install_gate(InstallCounts(installed=9, failed=1, skipped=0, waiting=0), 0.9).status == "passed"
    below = install_gate(InstallCounts(installed=8, failed=2, skipped=0, waiting=0), 0.9)
    assert (below.status, below.value, below.threshold) == ("failed", 0.8, 0.9)


def test_install_gate_waits_while_devices_can_still_lift_the_ratio() -> None:
    result = install_gate(InstallCounts(installed=3, failed=0, skipped=0, waiting=7), 1.0)
    assert result.status == "waiting" and "7 waiting" in result.reason


def test_install_gate_fails_early_when_the_rest_cannot_save_it() -> None:
    result = install_gate(InstallCounts(installed=0, failed=1, skipped=0, waiting=9), 1.0)
    assert result.status == "failed" and "at best 0.900" in result.reason


def test_single_canary_failing_acceptance_fails_the_install_gate() -> None:
    result = install_gate(InstallCounts(installed=0, failed=1, skipped=0, waiting=0), 1.0)
    assert (result.status, result.value) == ("failed", 0.0)


def test_skipped_devices_do_not_count() -> None:
    result = install_gate(InstallCounts(installed=2, failed=0, skipped=5, waiting=0), 1.0)
    assert (result.status, result.value) == ("passed", 1.0)
    none_counted = install_gate(InstallCounts(installed=0, failed=0, skipped=3, waiting=0), 1.0)
    assert none_counted.status == "passed" and none_counted.value is None


# --- telemetry gates -----------------------------------------------------------------------------


def test_healthy_release_passes_every_gate() -> None:
    results = evaluate(telemetry())
    assert {gate: r.status for gate, r in results.items()} == dict.fromkeys(results, "passed")
    assert decide(list(results.values())).status == "passed"


def test_gates_wait_for_the_soak_time() -> None:
    results = evaluate(telemetry(error_rate=0.5), soak_elapsed_s=30.0)
    assert {r.status for r in results.values()} == {"waiting"}
    assert "soaking: 30 of 60 s" in results["error_rate"].reason


def test_too_few_requests_is_waiting_not_a_pass() -> None:
    results = evaluate(telemetry(request_count=99))
    assert {r.status for r in results.values()} == {"waiting"}
    assert "99 of 100 requests" in results["p95_latency_budget"].reason
    assert decide(list(results.values())).status == "waiting"


@pytest.mark.parametrize(
    ("gate", "field", "ok", "bad", "threshold"),
    [
        ("error_rate", "error_rate", 0.01, 0.0101, 0.01),
        ("drift_psi", "drift_psi", 0.2, 0.21, 0.2),
        ("p95_latency_budget", "p95_latency_ms", 50.0, 50.5, 50.0),
        ("shadow_agreement", "shadow_agreement", 0.95, 0.949, 0.95),
    ],
)
def test_each_gate_passes_at_its_threshold_and_fails_past_it(
    gate: str, field: str, ok: float, bad: float, threshold: float
) -> None:
    passing = evaluate(telemetry(**{field: ok}))[gate]
    assert (passing.status, passing.value, passing.threshold) == ("passed", ok, threshold)
    failing = evaluate(telemetry(**{field: bad}))[gate]
    assert (failing.status, failing.value) == ("failed", bad)
    assert decide([passing, failing]).status == "failed"


def test_latency_regression_is_measured_against_the_baseline_version() -> None:
    baseline = telemetry("1", p95_latency_ms=10.0)
    within = evaluate(telemetry(p95_latency_ms=12.0), baseline=baseline)["latency_regression_pct"]
    assert within.status == "passed" and within.value == pytest.approx(20.0)
    worse = evaluate(telemetry(p95_latency_ms=12.5), baseline=baseline)["latency_regression_pct"]
    assert worse.status == "failed" and worse.value == pytest.approx(25.0)
    faster = evaluate(telemetry(p95_latency_ms=5.0), baseline=baseline)["latency_regression_pct"]
    assert faster.status == "passed" and faster.value == pytest.approx(-50.0)


def test_regression_is_skipped_without_a_usable_baseline() -> None:
    results = telemetry_gates(
        ALL_ON, mode="active", new=telemetry(), baseline=None, latency_budget_ms=50.0, soak_elapsed_s=61.0
    )
    regression = next(r for r in results if r.gate == "latency_regression_pct")
    assert regression.status == "skipped" and "no baseline" in regression.reason
    quiet = evaluate(telemetry(), baseline=telemetry("1", request_count=3))["latency_regression_pct"]
    assert quiet.status == "skipped" and "has 3 requests" in quiet.reason


def test_unmeasurable_values_are_skipped_with_the_reason() -> None:
    results = evaluate(telemetry(drift_psi=None, p95_latency_ms=None))
    assert results["drift_psi"].status == "skipped" and "reference histogram" in results["drift_psi"].reason
    assert results["p95_latency_budget"].status == "skipped"
    assert decide(list(results.values())).status == "passed"


def test_missing_shadow_agreement_in_shadow_mode_waits() -> None:
    result = evaluate(telemetry(shadow_agreement=None))["shadow_agreement"]
    assert result.status == "waiting"


def test_shadow_agreement_is_not_a_gate_in_active_mode() -> None:
    result = evaluate(telemetry(shadow_agreement=0.1), mode="active")["shadow_agreement"]
    assert result.status == "skipped" and "only in shadow mode" in result.reason


def test_gates_that_are_off_are_skipped_and_never_block() -> None:
    results = evaluate(
        telemetry(error_rate=0.9, request_count=0),
        gates=Gates(check_latency_budget=False, min_requests=0, soak_s=0.0),
        soak_elapsed_s=0.0,
    )
    assert {r.status for r in results.values()} == {"skipped"}
    assert decide(list(results.values())).status == "passed"


def test_no_requests_at_all_is_skipped_as_such_when_none_are_required() -> None:
    results = evaluate(
        telemetry(request_count=0), gates=Gates(min_requests=0, soak_s=0.0, max_error_rate=0.1)
    )
    assert results["error_rate"].status == "skipped"
    assert results["error_rate"].reason == "no requests of version 2 in the window"


def test_no_budget_for_the_profiles_skips_the_budget_gate() -> None:
    result = evaluate(telemetry(), budget_ms=None)["p95_latency_budget"]
    assert result.status == "skipped" and "no latency budget" in result.reason


def test_a_failure_wins_over_waiting() -> None:
    install = install_gate(InstallCounts(installed=0, failed=1, skipped=0, waiting=0), 1.0)
    waiting = evaluate(telemetry(request_count=1))["error_rate"]
    assert decide([install, waiting]).status == "failed"
