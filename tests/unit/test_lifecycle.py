"""The agent's lifecycle table and its persistence, without any I/O beyond a temp file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.lifecycle import TRANSITIONS, IllegalTransitionError, Lifecycle
from protocols.messages import ErrorReport


def test_a_successful_update_walks_the_table_to_active(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path / "state.json")
    for event in ("target_changed", "downloaded", "verified", "installed", "accepted"):
        lifecycle.apply("digits", event)  # type: ignore[arg-type]
    assert lifecycle.record("digits").state == "active"


def test_every_step_is_persisted_and_an_interrupted_update_is_found_after_restart(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path / "state.json")
    lifecycle.apply("digits", "target_changed")
    lifecycle.apply("digits", "downloaded")
    reopened = Lifecycle(tmp_path / "state.json")
    assert reopened.record("digits").state == "verifying"
    assert reopened.interrupted() == ["digits"]
    assert reopened.apply("digits", "restarted") == "downloading"


def test_a_rejected_profile_goes_back_to_downloading_for_the_next_one(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path / "state.json")
    for event in ("target_changed", "downloaded", "verified", "installed"):
        lifecycle.apply("digits", event)  # type: ignore[arg-type]
    error = ErrorReport(code="AcceptanceFailedError", message="golden outputs off")
    assert lifecycle.apply("digits", "rejected", error=error) == "downloading"
    assert lifecycle.record("digits").last_error == error
    assert lifecycle.apply("digits", "failed", error=error) == "failed"


def test_an_event_the_table_does_not_allow_is_refused(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path / "state.json")
    with pytest.raises(IllegalTransitionError, match="idle"):
        lifecycle.apply("digits", "accepted")


def test_desired_version_already_current_clears_a_failure(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path / "state.json")
    lifecycle.apply("digits", "target_changed")
    lifecycle.apply("digits", "failed", error=ErrorReport(code="X", message="y"))
    assert lifecycle.apply("digits", "target_satisfied") == "active"
    assert lifecycle.record("digits").last_error is None


def test_no_state_is_a_dead_end() -> None:
    states = {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values())
    leaving = {state for state, _ in TRANSITIONS}
    assert states <= leaving
