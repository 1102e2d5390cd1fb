"""The update lifecycle of one model on this device: one transition table, persisted each step.

`TRANSITIONS[(state, event)] -> state` is the whole lifecycle; anything not in it is a bug and
raises. The agent persists `AgentState` (`state.json`, atomic write) after every transition, so a
restart resumes where it stopped: an interrupted download resumes from its partial file, an
interrupted install/test starts that step again. What is *served* is decided by the store's
`current` link, never by this file, so a crash between the two can not mix versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from edge_agent.errors import AgentError
from protocols.durable import write_atomic
from protocols.identifiers import UtcDatetime
from protocols.messages import ErrorReport, LifecycleState, ModelAssignment, utc_now

Event = Literal[
    "target_changed",  # desired state names a version other than the current one
    "target_satisfied",  # desired state names the version already current
    "downloaded",
    "verified",
    "installed",
    "accepted",
    "rejected",  # acceptance test failed for one profile; the next in the fallback chain is tried
    "failed",  # no artifact could be installed: keep serving current
    "rollback_requested",
    "restarted",  # agent started while a step was in flight
]

TRANSITIONS: dict[tuple[LifecycleState, Event], LifecycleState] = {
    ("idle", "target_changed"): "downloading",
    ("active", "target_changed"): "downloading",
    ("failed", "target_changed"): "downloading",
    ("rolled_back", "target_changed"): "downloading",
    ("downloading", "target_changed"): "downloading",
    ("verifying", "target_changed"): "downloading",
    ("testing", "target_changed"): "downloading",
    ("installing", "target_changed"): "downloading",
    ("idle", "target_satisfied"): "active",
    ("failed", "target_satisfied"): "active",
    ("rolled_back", "target_satisfied"): "active",
    ("downloading", "downloaded"): "verifying",
    ("verifying", "verified"): "installing",
    ("installing", "installed"): "testing",
    ("testing", "accepted"): "active",
    ("testing", "rejected"): "downloading",
    ("downloading", "failed"): "failed",
    ("verifying", "failed"): "failed",
    ("installing", "failed"): "failed",
    ("testing", "failed"): "failed",
    ("active", "rollback_requested"): "rolled_back",
    ("failed", "rollback_requested"): "rolled_back",
    ("rolled_back", "rollback_requested"): "rolled_back",
    ("downloading", "restarted"): "downloading",
    ("verifying", "restarted"): "downloading",
    ("installing", "restarted"): "downloading",
    ("testing", "restarted"): "downloading",
}

IN_FLIGHT: frozenset[LifecycleState] = frozenset({"downloading", "verifying", "installing", "testing"})


class IllegalTransitionError(AgentError):
    def __init__(self, model: str, state: str, event: str) -> None:
        super().__init__(f"{model}: no transition from {state!r} on {event!r}")


class ModelRecord(msgspec.Struct, kw_only=True):
    """What the agent knows about one model. Mutable; persisted inside `AgentState`."""

    model: str
    state: LifecycleState = "idle"
    target: ModelAssignment | None = None
    """The assignment being worked on (or last worked on)."""
    profile_index: int = 0
    """Position in this device's fallback chain for the current attempt."""
    installed_counter: int = 0
    """`model_counter` of the release serving now (anti-rollback floor)."""
    last_error: ErrorReport | None = None
    updated_at: UtcDatetime = msgspec.field(default_factory=utc_now)


class AgentState(msgspec.Struct, kw_only=True):
    observed_revision: int = 0
    models: dict[str, ModelRecord] = msgspec.field(default_factory=dict)


class Lifecycle:
    """Owns `state.json`: apply events through the table, persist after each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = (
            msgspec.json.decode(path.read_bytes(), type=AgentState) if path.exists() else AgentState()
        )

    def record(self, model: str) -> ModelRecord:
        return self.state.models.setdefault(model, ModelRecord(model=model))

    def apply(self, model: str, event: Event, *, error: ErrorReport | None = None) -> LifecycleState:
        record = self.record(model)
        new_state = TRANSITIONS.get((record.state, event))
        if new_state is None:
            raise IllegalTransitionError(model, record.state, event)
        record.state = new_state
        record.updated_at = utc_now()
        if error is not None or event in ("accepted", "target_changed", "target_satisfied"):
            record.last_error = error
        self.save()
        return new_state

    def interrupted(self) -> list[str]:
        """Models whose update was in flight when the agent stopped."""
        return [name for name, r in self.state.models.items() if r.state in IN_FLIGHT]

    def save(self) -> None:
        write_atomic(self.path, msgspec.json.encode(self.state))
