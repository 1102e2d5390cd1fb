"""Which targeted device goes in which wave: a plain function over plain values, no I/O.

Invariants:
- Waves are cumulative per hardware profile: after wave i, `cumulative_sizes(steps, n)[i]` of the
  profile's n devices are in a wave <= i. `count` is capped at n; `percent` rounds up, so every
  non-empty profile has at least one device in the first wave; the last step (100 %) takes all.
- Deterministic: within a profile, devices that are online come first (a canary that is away would
  only wait for its deadline), then by id; the same inputs give the same plan.
- Waves that would hold no device (a small profile reached its size early) are dropped, so every
  planned wave has a device; positions are renumbered from 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from control_plane.rollouts.schemas import WaveStep

_PERCENT_SLACK = 1e-9
"""So that 10 % of 30 devices is 3 and not 4 when floating point makes it 3.0000000000000004."""


@dataclass(frozen=True, slots=True)
class Candidate:
    device_id: str
    profile: str
    is_online: bool


@dataclass(frozen=True, slots=True)
class PlannedDevice:
    device_id: str
    profile: str
    wave: int


def steps_problem(steps: Sequence[WaveStep]) -> str | None:
    """Why `steps` cannot be planned, or None if they can."""
    for position, step in enumerate(steps):
        if (step.count is None) == (step.percent is None):
            return f"wave {position}: give exactly one of 'count' or 'percent'"
    if steps[-1].percent != 100.0:
        return "the last wave must be {'percent': 100}, so that every targeted device is reached"
    return None


def cumulative_sizes(steps: Sequence[WaveStep], size: int) -> list[int]:
    """How many of a profile's `size` devices are in waves 0..i, for each step i (never shrinking)."""
    sizes: list[int] = []
    reached = 0
    for step in steps:
        if step.count is not None:
            wanted = min(step.count, size)
        else:
            assert step.percent is not None  # steps_problem checked exactly one is set
            wanted = min(math.ceil(size * step.percent / 100.0 - _PERCENT_SLACK), size)
        reached = max(reached, wanted)
        sizes.append(reached)
    return sizes


def plan_waves(candidates: Iterable[Candidate], steps: Sequence[WaveStep]) -> list[list[PlannedDevice]]:
    """The devices of each wave, in order; see the module invariants."""
    ordered = sorted(candidates, key=lambda c: (c.profile, not c.is_online, c.device_id))
    waves: list[list[PlannedDevice]] = [[] for _ in steps]
    for profile, group in groupby(ordered, key=lambda c: c.profile):
        devices = list(group)
        start = 0
        for position, end in enumerate(cumulative_sizes(steps, len(devices))):
            waves[position] += [PlannedDevice(d.device_id, profile, position) for d in devices[start:end]]
            start = end
    non_empty = [wave for wave in waves if wave]
    return [
        [PlannedDevice(d.device_id, d.profile, position) for d in wave]
        for position, wave in enumerate(non_empty)
    ]
