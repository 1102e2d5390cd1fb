"""What a rollout writes into a device's desired state, and what the device's reported state says
about it: plain functions over wire values, no I/O.

Invariants:
- A desired state is a device's complete model set; a rollout changes only its own model's
  assignments and keeps every other model as it was.
- Active mode replaces every assignment of the model with the release; shadow mode keeps the
  active assignment and replaces only the shadow one. Rolling back puts back exactly the
  assignment the device had before (or none), dropping the rollout's.
- A reported state decides an outcome only once the device has observed the revision the rollout
  wrote (`observed_revision >= revision`): the agent sets it after it has processed that desired
  state, so an older report never counts as an answer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from protocols.messages import ModelAssignment, ModelStatus, ReportedState, RolloutMode


class RevertStatus(enum.Enum):
    WAITING = "waiting"
    REVERTED = "reverted"
    NEEDS_COMMAND = "needs_command"
    """Still serving the rollout's version: the agent refuses an older release from desired state
    (its anti-rollback floor), so it needs the `rollback` command to switch back locally."""


def previous_assignment(models: Sequence[ModelAssignment], model: str) -> ModelAssignment | None:
    """The device's active assignment of `model`, if it has one."""
    return next((a for a in models if a.model == model and a.mode == "active"), None)


def with_assignment(
    models: Sequence[ModelAssignment], assignment: ModelAssignment
) -> tuple[ModelAssignment, ...]:
    """`models` with `assignment` in place of the model's assignments of its mode (active: all)."""
    kept = [
        a
        for a in models
        if a.model != assignment.model or (assignment.mode == "shadow" and a.mode == "active")
    ]
    return (*kept, assignment)


def with_previous(
    models: Sequence[ModelAssignment], model: str, previous: ModelAssignment | None
) -> tuple[ModelAssignment, ...]:
    """`models` with every assignment of `model` replaced by `previous` (None: no assignment)."""
    kept = [a for a in models if a.model != model]
    return tuple(kept) if previous is None else (*kept, previous)


def has_assignment(models: Sequence[ModelAssignment], assignment: ModelAssignment) -> bool:
    return any(a == assignment for a in models)


def install_outcome(
    reported: ReportedState | None, *, model: str, version: str, mode: RolloutMode, revision: int
) -> tuple[bool, str] | None:
    """(installed?, why) once the device has answered revision `revision`; None while it has not."""
    if reported is None or reported.observed_revision < revision:
        return None
    status = _status(reported, model)
    if status is None:
        return False, f"the device reports no {model}"
    served = status.shadow_version if mode == "shadow" else status.current_version
    if served == version:
        return True, f"serving {version}" + (" in shadow" if mode == "shadow" else "")
    if status.last_error is not None:
        return False, f"{status.last_error.code}: {status.last_error.message}"
    return False, f"{status.state}, serving {served or 'nothing'}"


def revert_outcome(
    reported: ReportedState | None, *, model: str, version: str, mode: RolloutMode, revision: int
) -> RevertStatus:
    """Whether a device rolled back has left the rollout's `version` (once it saw `revision`).

    Shadow: answering the revision is enough (the agent does not unload a shadow that is no longer
    assigned; it only feeds telemetry). Active: it must no longer serve `version`.
    """
    if reported is None or reported.observed_revision < revision:
        return RevertStatus.WAITING
    if mode == "shadow":
        return RevertStatus.REVERTED
    status = _status(reported, model)
    if status is not None and status.current_version == version:
        return RevertStatus.NEEDS_COMMAND
    return RevertStatus.REVERTED


def _status(reported: ReportedState, model: str) -> ModelStatus | None:
    return next((s for s in reported.models if s.model == model), None)
