"""Errors of `edgefabric demo`: process errors (never HTTP answers), each one readable line."""

from __future__ import annotations

from control_plane.errors import ControlPlaneError


class DemoError(ControlPlaneError):
    """Something the demo needed did not happen: a child failed, a wait ran out, a result was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepFailedError(ControlPlaneError):
    """Step `number` of the story did not do what it said; the demo exits 1 with this line."""

    def __init__(self, number: int, title: str, reason: str) -> None:
        super().__init__(f"step {number} ({title}) failed: {reason}")
        self.number = number
        self.title = title
        self.reason = reason
