"""The rollout and wave state tables: every allowed (state, event) -> state, nothing else.

Operator events (`pause`, `resume`, `abort`, `rollback`, `promote`) and engine events go through the
same tables, so an operator call that does not apply to the current state is a 409 naming the state,
and the engine cannot take a step the table does not allow.

Rollout: running -> completed (every wave passed), running -> halted (a gate failed) ->
rolling_back -> rolled_back; paused <-> running; abort stops a live rollout where it is; rollback is
allowed from any state that has not rolled back yet; promote (shadow mode) re-opens a running or
completed rollout to install the release actively.

Wave: pending -> installing -> soaking -> passed | failed; installing -> failed (install gate);
a promotion puts the wave in progress back to installing (a wave not started yet stays pending).
"""

from __future__ import annotations

from typing import Literal

from control_plane.errors import ConflictError
from control_plane.rollouts.schemas import RolloutState, WaveState

RolloutEvent = Literal[
    "pause",
    "resume",
    "abort",
    "rollback",
    "promote",
    "gate_failed",
    "rollback_started",
    "reverted",
    "waves_done",
]
WaveEvent = Literal["started", "installed", "gates_passed", "gates_failed", "promoted"]

_R = RolloutState
_W = WaveState

ROLLOUT_TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (_R.RUNNING, "pause"): _R.PAUSED,
    (_R.PAUSED, "resume"): _R.RUNNING,
    (_R.RUNNING, "waves_done"): _R.COMPLETED,
    (_R.RUNNING, "gate_failed"): _R.HALTED,
    (_R.HALTED, "rollback_started"): _R.ROLLING_BACK,
    (_R.ROLLING_BACK, "reverted"): _R.ROLLED_BACK,
    (_R.RUNNING, "promote"): _R.RUNNING,
    (_R.COMPLETED, "promote"): _R.RUNNING,
    **{(state, "abort"): _R.ABORTED for state in (_R.RUNNING, _R.PAUSED, _R.HALTED)},
    **{
        (state, "rollback"): _R.ROLLING_BACK
        for state in (_R.RUNNING, _R.PAUSED, _R.HALTED, _R.COMPLETED, _R.ABORTED)
    },
}

WAVE_TRANSITIONS: dict[tuple[WaveState, WaveEvent], WaveState] = {
    (_W.PENDING, "started"): _W.INSTALLING,
    (_W.INSTALLING, "installed"): _W.SOAKING,
    (_W.INSTALLING, "gates_failed"): _W.FAILED,
    (_W.SOAKING, "gates_passed"): _W.PASSED,
    (_W.SOAKING, "gates_failed"): _W.FAILED,
    (_W.PENDING, "promoted"): _W.PENDING,
    **{(state, "promoted"): _W.INSTALLING for state in (_W.INSTALLING, _W.SOAKING, _W.PASSED)},
}

LIVE_STATES = frozenset({_R.RUNNING, _R.PAUSED, _R.HALTED, _R.ROLLING_BACK})
"""States in which a rollout still owns its devices' assignment of its model."""
ENGINE_STATES = frozenset({_R.RUNNING, _R.HALTED, _R.ROLLING_BACK})
"""States the engine acts on at each tick."""


def next_rollout_state(state: RolloutState, event: RolloutEvent) -> RolloutState:
    """The state after `event`; `ConflictError` (409) if the table has no such step."""
    after = ROLLOUT_TRANSITIONS.get((state, event))
    if after is None:
        raise ConflictError(f"cannot {event.replace('_', ' ')} a rollout that is {state.value}")
    return after


def next_wave_state(state: WaveState, event: WaveEvent) -> WaveState:
    after = WAVE_TRANSITIONS.get((state, event))
    if after is None:
        raise ConflictError(f"cannot apply {event!r} to a wave that is {state.value}")
    return after
