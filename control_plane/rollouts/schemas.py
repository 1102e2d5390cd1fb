"""REST and service values of rollouts: the spec an operator submits and the views of its progress.

A rollout is a release (model + version), a target selector, waves, gates, a mode and a per-device
deadline. `RolloutSpec` is the request body and is stored as it came (it forbids unknown fields, so
a misspelt gate is a 400 rather than a gate silently off). Views are frozen Structs; every decision
carries the numbers behind it (`GateResult`).

Waves are cumulative and applied per hardware profile: `{"count": 1}` then `{"percent": 50}` then
`{"percent": 100}` means "one device of each profile, then half of each profile, then all of them".
The last wave must be `{"percent": 100}`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from control_plane.fleet.schemas import Labels
from protocols.identifiers import ModelName, ProfileName, Version
from protocols.messages import RolloutMode

MAX_WAVES = 20
MAX_DEVICE_DEADLINE_S = 7 * 24 * 3600.0
MAX_SOAK_S = 7 * 24 * 3600.0

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
OnDeadline = Literal["failed", "skipped"]


class WaveStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How many devices of each profile have the release once this wave is done: exactly one of
    `count` (at least that many, capped at the profile's size) or `percent` (rounded up)."""

    count: Annotated[int, msgspec.Meta(ge=1)] | None = None
    percent: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)] | None = None


class Selector(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which devices the rollout targets: all of `labels` must match; any of `profiles` (empty: any)."""

    labels: Labels = {}
    profiles: Annotated[tuple[ProfileName, ...], msgspec.Meta(max_length=32)] = ()


class Gates(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a wave must show before the next one starts. A `None` threshold is a gate that is off.

    The install gate is decided as soon as the wave's devices have answered; the telemetry gates
    (latency, error rate, drift, shadow agreement) after `soak_s` of soak, over the new version's
    telemetry since the wave began soaking, and only once it holds `min_requests` requests.
    """

    min_install_success_ratio: Fraction = 1.0
    """Installed / (installed + failed) over the devices the rollout has assigned so far."""
    check_latency_budget: bool = True
    """p95 must be within the targeted hardware profiles' budget (the loosest when they differ)."""
    max_latency_regression_pct: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    """p95 may be at most this much worse than the baseline version's (the devices' previous one)."""
    max_error_rate: Fraction | None = None
    max_drift_psi: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    """PSI of the outputs against the release's reference histogram."""
    min_shadow_agreement: Fraction | None = None
    """Shadow mode only: top-1 agreement of the shadow model with the active one."""
    soak_s: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_SOAK_S)] = 300.0
    min_requests: Annotated[int, msgspec.Meta(ge=0)] = 100


class RolloutSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/v1/rollouts`: roll release `model`/`version` out to the devices `selector` picks."""

    model: ModelName
    version: Version
    selector: Selector = msgspec.field(default_factory=Selector)
    waves: Annotated[tuple[WaveStep, ...], msgspec.Meta(min_length=1, max_length=MAX_WAVES)] = (
        WaveStep(count=1),
        WaveStep(percent=100.0),
    )
    gates: Gates = Gates()
    mode: RolloutMode = "active"
    device_deadline_s: Annotated[float, msgspec.Meta(gt=0.0, le=MAX_DEVICE_DEADLINE_S)] = 3600.0
    """How long a device has to install after its desired state is written (and to roll back)."""
    on_deadline: OnDeadline = "failed"
    """What a device that misses its deadline counts as: `failed` (against the install ratio) or
    `skipped` (not counted; it still converges when it returns)."""


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    """A gate failed; the engine rolls the touched devices back next."""
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    COMPLETED = "completed"
    ABORTED = "aborted"
    """Stopped by an operator; devices keep what they have."""


class WaveState(enum.StrEnum):
    PENDING = "pending"
    INSTALLING = "installing"
    SOAKING = "soaking"
    PASSED = "passed"
    FAILED = "failed"


class DeviceState(enum.StrEnum):
    PENDING = "pending"
    """Not assigned yet (its wave has not started, or a promotion re-assigns it)."""
    ASSIGNED = "assigned"
    """Desired state written; waiting for the device to report the outcome."""
    INSTALLED = "installed"
    FAILED = "failed"
    SKIPPED = "skipped"
    REVERTING = "reverting"
    """Rolling back: its previous assignment is (being) written; waiting for the device."""
    REVERTED = "reverted"
    UNREVERTED = "unreverted"
    """Rolling back: it did not confirm its previous model before the deadline."""


GateStatus = Literal["passed", "failed", "waiting", "skipped"]
Outcome = Literal["passed", "failed", "waiting", "info"]


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    gate: str
    status: GateStatus
    """`waiting`: not enough data yet; `skipped`: off, or not measurable (the reason says which)."""
    value: float | None
    threshold: float | None
    reason: str


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One step the engine (or an operator) took, with the numbers behind it."""

    seq: int
    at: datetime
    wave: int | None
    kind: str
    outcome: Outcome
    summary: str
    gates: list[GateResult]
    actor: str
    """`engine`, or the id of the token that asked."""


class WaveInfo(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    state: WaveState
    device_count: int
    devices_by_state: dict[str, int]
    started_at: datetime | None
    soak_started_at: datetime | None
    finished_at: datetime | None
    gates: list[GateResult]
    """The latest evaluation of the wave's gates (decisions keep the ones that changed something)."""


class RolloutDevice(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    profile: str
    wave: int
    state: DeviceState
    previous_version: str | None
    """The version of the model the device was assigned before this rollout (None: none)."""
    revision: int | None
    """Desired-state revision written by this rollout (the rollback's while rolling back)."""
    reason: str | None
    updated_at: datetime


class RolloutInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    model: str
    version: str
    mode: RolloutMode
    state: RolloutState
    current_wave: int
    baseline_version: str | None
    """The version most targeted devices had before; latency regression is measured against it."""
    spec: RolloutSpec
    reason: str | None
    """Why it stopped (a failed gate, an operator), or None."""
    created_at: datetime
    created_by: str
    updated_at: datetime
    finished_at: datetime | None
    promoted_at: datetime | None
    device_count: int
    waves: list[WaveInfo]


class RolloutStatus(RolloutInfo, frozen=True, kw_only=True):
    """A rollout with its decisions, oldest first (the latest `MAX_STATUS_DECISIONS`)."""

    decisions: list[Decision]


class RolloutPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[RolloutInfo]
    total: int
    limit: int
    offset: int


class RolloutDevicePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[RolloutDevice]
    total: int
    limit: int
    offset: int


MAX_STATUS_DECISIONS = 200
