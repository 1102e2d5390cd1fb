"""What a rollout writes into desired state and reads from reported state
(`control_plane.rollouts.convergence`), and its state tables (`control_plane.rollouts.states`)."""

from __future__ import annotations

import pytest

from control_plane.errors import ConflictError
from control_plane.rollouts.convergence import (
    RevertStatus,
    install_outcome,
    previous_assignment,
    revert_outcome,
    with_assignment,
    with_previous,
)
from control_plane.rollouts.schemas import RolloutState, WaveState
from control_plane.rollouts.states import ROLLOUT_TRANSITIONS, next_rollout_state, next_wave_state
from protocols.messages import ErrorReport, ModelAssignment, ModelStatus, ReleaseRef, ReportedState


def assignment(model: str, version: str, mode: str = "active") -> ModelAssignment:
    return ModelAssignment(
        model=model,
        release=ReleaseRef(model=model, version=version, model_counter=int(version)),
        mode=mode,  # type: ignore[arg-type]
    )


def reported(revision: int, **status: object) -> ReportedState:
    return ReportedState(
        device_id="dev-1",
        profile="cpu-x86_64",
        observed_revision=revision,
        models=(ModelStatus(model="digits", **status),),  # type: ignore[arg-type]
    )


OTHER = assignment("keywords", "7")


def test_active_assignment_replaces_the_model_and_keeps_other_models() -> None:
    models = (OTHER, assignment("digits", "1"), assignment("digits", "3", "shadow"))
    assert with_assignment(models, assignment("digits", "2")) == (OTHER, assignment("digits", "2"))


def test_shadow_assignment_keeps_the_active_one() -> None:
    models = (OTHER, assignment("digits", "1"))
    shadow = assignment("digits", "2", "shadow")
    assert with_assignment(models, shadow) == (OTHER, assignment("digits", "1"), shadow)
    assert previous_assignment(with_assignment(models, shadow), "digits") == assignment("digits", "1")


def test_rolling_back_restores_exactly_the_previous_assignment_or_none() -> None:
    models = (OTHER, assignment("digits", "1"), assignment("digits", "2", "shadow"))
    assert with_previous(models, "digits", assignment("digits", "1")) == (OTHER, assignment("digits", "1"))
    assert with_previous((OTHER, assignment("digits", "2")), "digits", None) == (OTHER,)


def test_an_older_report_is_not_an_answer() -> None:
    assert install_outcome(reported(4, state="active", current_version="2"), **_wanted(revision=5)) is None
    assert install_outcome(None, **_wanted(revision=5)) is None


def test_serving_the_release_after_seeing_the_revision_is_installed() -> None:
    assert install_outcome(reported(5, state="active", current_version="2"), **_wanted(revision=5)) == (
        True,
        "serving 2",
    )


def test_acceptance_failure_is_failed_with_the_devices_error() -> None:
    error = ErrorReport(code="AcceptanceError", message="golden outputs differ")
    outcome = install_outcome(
        reported(5, state="failed", current_version="1", target_version="2", last_error=error),
        **_wanted(revision=5),
    )
    assert outcome == (False, "AcceptanceError: golden outputs differ")


def test_shadow_install_is_judged_on_the_shadow_version() -> None:
    shadow = _wanted(revision=3, mode="shadow")
    assert install_outcome(
        reported(3, state="active", current_version="1", shadow_version="2"), **shadow
    ) == (
        True,
        "serving 2 in shadow",
    )
    installed, _ = install_outcome(reported(3, state="active", current_version="1"), **shadow) or (None, "")
    assert installed is False


def test_revert_needs_the_command_while_the_device_still_serves_the_release() -> None:
    wanted = _wanted(revision=9)
    assert revert_outcome(reported(8, current_version="1", state="active"), **wanted) == RevertStatus.WAITING
    assert (
        revert_outcome(reported(9, current_version="2", state="failed"), **wanted)
        == RevertStatus.NEEDS_COMMAND
    )
    assert revert_outcome(reported(9, current_version="1", state="active"), **wanted) == RevertStatus.REVERTED
    assert revert_outcome(reported(9, state="active"), **_wanted(revision=9, mode="shadow")) == (
        RevertStatus.REVERTED
    )


def _wanted(*, revision: int, mode: str = "active") -> dict[str, object]:
    return {"model": "digits", "version": "2", "mode": mode, "revision": revision}


# --- state tables --------------------------------------------------------------------------------


def test_operator_steps_that_do_not_apply_are_conflicts_naming_the_state() -> None:
    with pytest.raises(ConflictError, match="cannot resume a rollout that is running"):
        next_rollout_state(RolloutState.RUNNING, "resume")
    with pytest.raises(ConflictError, match="cannot rollback a rollout that is rolled_back"):
        next_rollout_state(RolloutState.ROLLED_BACK, "rollback")


def test_ended_rollouts_accept_only_rollback_or_promotion() -> None:
    for state in (RolloutState.ROLLED_BACK, RolloutState.COMPLETED, RolloutState.ABORTED):
        allowed = {event for (s, event) in ROLLOUT_TRANSITIONS if s == state}
        assert allowed <= {"rollback", "promote"}


def test_failed_gate_halts_then_rolls_back() -> None:
    halted = next_rollout_state(RolloutState.RUNNING, "gate_failed")
    rolling = next_rollout_state(halted, "rollback_started")
    assert (halted, rolling, next_rollout_state(rolling, "reverted")) == (
        RolloutState.HALTED,
        RolloutState.ROLLING_BACK,
        RolloutState.ROLLED_BACK,
    )


def test_wave_goes_pending_installing_soaking_passed_and_promotion_reopens_it() -> None:
    state = WaveState.PENDING
    for event in ("started", "installed", "gates_passed"):
        state = next_wave_state(state, event)  # type: ignore[arg-type]
    assert state == WaveState.PASSED
    assert next_wave_state(state, "promoted") == WaveState.INSTALLING
    with pytest.raises(ConflictError):
        next_wave_state(WaveState.FAILED, "promoted")
