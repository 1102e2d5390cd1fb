"""Wave planning (`control_plane.rollouts.planning`): which device goes in which wave, per profile."""

from __future__ import annotations

import pytest

from control_plane.rollouts.planning import Candidate, cumulative_sizes, plan_waves, steps_problem
from control_plane.rollouts.schemas import WaveStep

CANARY_THEN_ALL = (WaveStep(count=1), WaveStep(percent=100.0))


def fleet(profile: str, size: int, *, offline: frozenset[int] = frozenset()) -> list[Candidate]:
    return [Candidate(f"{profile}-{i:03d}", profile, i not in offline) for i in range(size)]


def ids(wave: list[object]) -> list[str]:
    return [d.device_id for d in wave]  # type: ignore[attr-defined]


def test_canary_then_rest_takes_one_device_of_each_profile_first() -> None:
    waves = plan_waves([*fleet("cpu-x86_64", 5), *fleet("cpu-arm64", 3)], CANARY_THEN_ALL)
    assert [len(w) for w in waves] == [2, 6]
    assert ids(waves[0]) == ["cpu-arm64-000", "cpu-x86_64-000"]
    assert {d.profile for d in waves[1]} == {"cpu-x86_64", "cpu-arm64"}
    assert all(d.wave == position for position, wave in enumerate(waves) for d in wave)


def test_every_device_is_planned_exactly_once() -> None:
    candidates = [*fleet("a", 37), *fleet("b", 1), *fleet("c", 200)]
    steps = (WaveStep(count=2), WaveStep(percent=10.0), WaveStep(percent=50.0), WaveStep(percent=100.0))
    planned = [d.device_id for wave in plan_waves(candidates, steps) for d in wave]
    assert sorted(planned) == sorted(c.device_id for c in candidates)


def test_percent_waves_are_cumulative_and_round_up() -> None:
    steps = (WaveStep(percent=10.0), WaveStep(percent=50.0), WaveStep(percent=100.0))
    assert cumulative_sizes(steps, 30) == [3, 15, 30]  # 10 % of 30 is 3, not 4 (floating point)
    assert cumulative_sizes(steps, 7) == [1, 4, 7]
    assert [len(w) for w in plan_waves(fleet("p", 30), steps)] == [3, 12, 15]


def test_count_is_capped_at_the_profile_size_and_waves_never_shrink() -> None:
    steps = (WaveStep(count=10), WaveStep(percent=20.0), WaveStep(percent=100.0))
    assert cumulative_sizes(steps, 4) == [4, 4, 4]
    assert cumulative_sizes(steps, 100) == [10, 20, 100]
    assert cumulative_sizes((WaveStep(count=50), WaveStep(percent=10.0), WaveStep(percent=100.0)), 100) == [
        50,
        50,
        100,
    ]


def test_empty_waves_are_dropped_and_positions_renumbered() -> None:
    waves = plan_waves(fleet("p", 1), (WaveStep(count=1), WaveStep(percent=50.0), WaveStep(percent=100.0)))
    assert len(waves) == 1 and waves[0][0].wave == 0


def test_online_devices_are_canaries_before_offline_ones() -> None:
    waves = plan_waves(fleet("p", 4, offline=frozenset({0, 1})), CANARY_THEN_ALL)
    assert ids(waves[0]) == ["p-002"]
    assert ids(waves[1]) == ["p-003", "p-000", "p-001"]


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    candidates = [*fleet("a", 20, offline=frozenset({3, 7})), *fleet("b", 9)]
    steps = (WaveStep(count=1), WaveStep(percent=30.0), WaveStep(percent=100.0))
    assert plan_waves(candidates, steps) == plan_waves(list(reversed(candidates)), steps)


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ((WaveStep(count=1),), "last wave must be"),
        ((WaveStep(percent=50.0),), "last wave must be"),
        ((WaveStep(), WaveStep(percent=100.0)), "wave 0: give exactly one"),
        ((WaveStep(count=1, percent=5.0), WaveStep(percent=100.0)), "wave 0: give exactly one"),
    ],
)
def test_steps_that_cannot_reach_everyone_or_are_ambiguous_are_refused(
    steps: tuple[WaveStep, ...], problem: str
) -> None:
    found = steps_problem(steps)
    assert found is not None and problem in found


def test_valid_steps_have_no_problem() -> None:
    assert steps_problem(CANARY_THEN_ALL) is None
