"""Creating rollouts, reading their status, and the operator's controls over them.

`create` plans the waves once, from the devices the selector matches at that moment, and stores the
whole plan; the engine (`engine.py`) then carries it out. Operator controls change state through the
tables in `states.py` and leave the device writes to the engine.

Invariants:
- At most one live rollout (running, paused, halted, rolling back) per model: a second is a 409, so
  two rollouts never fight over the same assignment.
- A rollout targets only enrolled, unrevoked devices whose profile's fallback chain has an artifact
  in the release; the plan, the rollout row and its `rollout.created` audit row commit together.
- Every state change takes the rollout's lock (shared with the engine), so an operator call never
  lands in the middle of an engine step; each one is recorded as a decision and in the audit log.
- Only the newest rollout of a model may be rolled back or promoted: an older one no longer owns
  the devices' assignment (a 409 names the newer one).
- Creating a rollout needs the broker (503 without one): nothing could carry it out.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Iterator, Sequence

import msgspec
from sqlite_utils import Database

from control_plane.audit.schemas import Actor
from control_plane.audit.services import AuditService
from control_plane.clock import Clock
from control_plane.errors import ConflictError, InvalidArgumentError, NotFoundError, UnavailableError
from control_plane.fleet.schemas import DeviceFilter, DeviceInfo
from control_plane.fleet.services import DeviceService
from control_plane.pagination import MAX_PAGE_LIMIT, PageRequest
from control_plane.releases.schemas import ReleaseInfo
from control_plane.releases.services import ReleaseService
from control_plane.rollouts.planning import Candidate, plan_waves, steps_problem
from control_plane.rollouts.repositories import RolloutRecord, RolloutRepository
from control_plane.rollouts.schemas import (
    MAX_STATUS_DECISIONS,
    Decision,
    DeviceState,
    GateResult,
    Outcome,
    RolloutDevicePage,
    RolloutInfo,
    RolloutPage,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    WaveInfo,
)
from control_plane.rollouts.states import LIVE_STATES, RolloutEvent, next_rollout_state, next_wave_state
from hardware_profiles.errors import ProfileError
from hardware_profiles.loader import fallback_chain
from protocols.transports.nats_bus import NatsBus

ENGINE_ACTOR = "engine"
_TOUCHED = (
    DeviceState.PENDING,
    DeviceState.ASSIGNED,
    DeviceState.INSTALLED,
    DeviceState.FAILED,
    DeviceState.SKIPPED,
)
"""States of a device the rollout may have written to (pending ones only once their previous
assignment was read: the write may have happened just before a crash)."""


class RolloutService:
    def __init__(
        self,
        db: Database,
        audit: AuditService,
        clock: Clock,
        *,
        releases: ReleaseService,
        devices: DeviceService,
        bus: NatsBus | None,
    ) -> None:
        self._db = db
        self._rollouts = RolloutRepository(db)
        self._audit = audit
        self._clock = clock
        self._releases = releases
        self._devices = devices
        self._bus = bus
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    def lock(self, rollout_id: str) -> asyncio.Lock:
        """The lock every change of `rollout_id` holds (operator calls and engine steps)."""
        return self._locks[rollout_id]

    # --- creating and reading ----------------------------------------------------------------------

    async def create(self, actor: Actor, spec: RolloutSpec) -> RolloutStatus:
        """Plan `spec` over the devices it targets now and start it (the engine does the rest)."""
        if self._bus is None:
            raise UnavailableError("broker", "this control plane runs without one to write desired state to")
        problem = steps_problem(spec.waves)
        if problem is not None:
            raise InvalidArgumentError("waves", problem)
        try:
            release = self._releases.get(spec.model, spec.version)
        except NotFoundError as e:
            raise InvalidArgumentError(
                "version", f"{spec.model} version {spec.version} is not released"
            ) from e
        live = self._rollouts.live_of_model(spec.model, LIVE_STATES)
        if live is not None:
            raise ConflictError(
                f"rollout {live.id} of {spec.model} is {live.state.value}; "
                "wait for it to finish, or abort or roll it back first"
            )
        matched = list(self._matching_devices(spec))
        servable = [device for device in matched if _can_serve(release, device.profile)]
        if not servable:
            raise InvalidArgumentError(
                "selector",
                f"no device to roll out to: {len(matched)} enrolled device(s) match, and the release has "
                f"artifacts for {', '.join(t.hw_profile for t in release.targets) or 'no profile'}",
            )
        waves = plan_waves((Candidate(d.id, d.profile, d.online) for d in servable), spec.waves)
        now = self._clock.now()
        record = RolloutRecord(
            id=secrets.token_hex(8),
            model=spec.model,
            version=spec.version,
            model_counter=release.model_counter,
            mode=spec.mode,
            state=RolloutState.RUNNING,
            current_wave=0,
            baseline_version=_baseline(servable, spec.model, spec.version),
            spec=spec,
            reason=None,
            created_at=now,
            created_by=actor.id,
            updated_at=now,
        )
        transports = {d.id: d.transport for d in servable}
        sizes = ", ".join(f"wave {i}: {len(wave)}" for i, wave in enumerate(waves))
        with self._db.atomic():
            self._rollouts.insert(record, len(waves))
            self._rollouts.insert_devices(
                record.id,
                ((d.device_id, d.profile, transports[d.device_id], d.wave) for wave in waves for d in wave),
                now,
            )
            self.decide(
                record.id,
                None,
                "planned",
                "info",
                f"{len(servable)} device(s) in {len(waves)} wave(s) ({sizes}); "
                f"{len(matched) - len(servable)} matched without an artifact for their profile; "
                f"baseline version {record.baseline_version or 'none'}",
                actor=actor.id,
            )
            self._audit.record(
                actor,
                "rollout.created",
                f"rollout:{record.id}",
                {"release": f"{spec.model}/{spec.version}", "mode": spec.mode, "devices": len(servable)},
            )
        return self.status(record.id)

    def list(self, model: str | None, page: PageRequest) -> RolloutPage:
        records, total = self._rollouts.page(model, limit=page.limit, offset=page.offset)
        return RolloutPage(
            items=[self._info(record) for record in records],
            total=total,
            limit=page.limit,
            offset=page.offset,
        )

    def status(self, rollout_id: str) -> RolloutStatus:
        """A rollout with its waves and latest decisions (what `edgefabric rollouts status` shows)."""
        info = self._info(self.record(rollout_id))
        decisions = self._rollouts.decisions(rollout_id, latest=MAX_STATUS_DECISIONS)
        return RolloutStatus(**msgspec.structs.asdict(info), decisions=decisions)

    def devices(self, rollout_id: str, page: PageRequest) -> RolloutDevicePage:
        self.record(rollout_id)
        items, total = self._rollouts.device_page(rollout_id, limit=page.limit, offset=page.offset)
        return RolloutDevicePage(items=items, total=total, limit=page.limit, offset=page.offset)

    # --- operator controls -------------------------------------------------------------------------

    async def pause(self, actor: Actor, rollout_id: str) -> RolloutStatus:
        """Stop writing assignments and judging gates until `resume` (devices keep converging)."""
        return await self._control(actor, rollout_id, "pause")

    async def resume(self, actor: Actor, rollout_id: str) -> RolloutStatus:
        return await self._control(actor, rollout_id, "resume")

    async def abort(self, actor: Actor, rollout_id: str) -> RolloutStatus:
        """Stop for good where it is; devices keep what they were assigned (`rollback` undoes it)."""
        return await self._control(actor, rollout_id, "abort")

    async def rollback(self, actor: Actor, rollout_id: str) -> RolloutStatus:
        """Give every device the rollout touched its previous assignment back (the engine writes it)."""
        return await self._control(actor, rollout_id, "rollback")

    async def promote(self, actor: Actor, rollout_id: str) -> RolloutStatus:
        """Turn a running or completed shadow rollout active: the devices it reached get the release
        as their active model (the engine writes it and judges the active gates), and the waves
        still to come install it actively."""
        record = self.record(rollout_id)
        if record.mode != "shadow":
            raise ConflictError(f"rollout {rollout_id} is not a shadow rollout")
        return await self._control(actor, rollout_id, "promote")

    async def _control(self, actor: Actor, rollout_id: str, event: RolloutEvent) -> RolloutStatus:
        async with self.lock(rollout_id):
            record = self.record(rollout_id)
            after = next_rollout_state(record.state, event)
            newer = self._rollouts.newer_of_model(record) if event in ("rollback", "promote") else None
            if newer is not None:
                raise ConflictError(
                    f"rollout {newer} of {record.model} came after this one and owns the assignment now"
                )
            now = self._clock.now()
            with self._db.atomic():
                if event == "rollback":
                    self.begin_rollback(record, actor=actor.id, reason=f"rolled back by {actor.name}")
                elif event == "promote":
                    self._promote(record, actor.id)
                else:
                    fields: dict[str, object] = {"state": after}
                    if after == RolloutState.ABORTED:
                        fields |= {"finished_at": now, "reason": f"aborted by {actor.name}"}
                    self._rollouts.update(rollout_id, now, **fields)
                    self.decide(
                        rollout_id,
                        record.current_wave,
                        event,
                        "info",
                        f"{event} by {actor.name}",
                        actor=actor.id,
                    )
                self._audit.record(
                    actor, f"rollout.{_PAST[event]}", f"rollout:{rollout_id}", {"from": record.state.value}
                )
        return self.status(rollout_id)

    def _promote(self, record: RolloutRecord, actor: str) -> None:
        now = self._clock.now()
        wave = self._rollouts.wave(record.id, record.current_wave)
        reassigned = self._rollouts.move_devices(
            record.id, _TOUCHED[1:], DeviceState.PENDING, now, max_wave=record.current_wave
        )
        self._rollouts.update(
            record.id, now, state=RolloutState.RUNNING, mode="active", promoted_at=now, finished_at=None
        )
        self._rollouts.update_wave(
            record.id,
            record.current_wave,
            state=next_wave_state(wave.state, "promoted"),
            soak_started_at=None,
            finished_at=None,
            gates=[],
        )
        self.decide(
            record.id,
            record.current_wave,
            "promote",
            "info",
            f"promoted to active: {reassigned} device(s) get {record.version} as their active model",
            actor=actor,
        )

    # --- shared with the engine --------------------------------------------------------------------

    def record(self, rollout_id: str) -> RolloutRecord:
        record = self._rollouts.get(rollout_id)
        if record is None:
            raise NotFoundError("rollout", rollout_id)
        return record

    def begin_rollback(self, record: RolloutRecord, *, actor: str, reason: str) -> None:
        """Enter rolling_back: every device the rollout may have written to is to be reverted
        (caller holds the lock and a transaction)."""
        now = self._clock.now()
        event: RolloutEvent = "rollback_started" if record.state == RolloutState.HALTED else "rollback"
        after = next_rollout_state(record.state, event)
        touched = self._rollouts.move_devices(
            record.id, _TOUCHED, DeviceState.REVERTING, now, is_previous_known=True
        )
        self._rollouts.update(
            record.id, now, state=after, reason=reason, rollback_started_at=now, finished_at=None
        )
        self.decide(
            record.id,
            record.current_wave,
            "rollback",
            "info",
            f"rolling back {touched} device(s) to their previous assignment: {reason}",
            actor=actor,
        )

    def decide(
        self,
        rollout_id: str,
        wave: int | None,
        kind: str,
        outcome: Outcome,
        summary: str,
        *,
        gates: Sequence[GateResult] = (),
        actor: str = ENGINE_ACTOR,
    ) -> Decision:
        """Record a decision with the numbers behind it."""
        return self._rollouts.add_decision(
            rollout_id,
            Decision(
                seq=0,
                at=self._clock.now(),
                wave=wave,
                kind=kind,
                outcome=outcome,
                summary=summary,
                gates=list(gates),
                actor=actor,
            ),
        )

    # --- helpers -----------------------------------------------------------------------------------

    def _matching_devices(self, spec: RolloutSpec) -> Iterator[DeviceInfo]:
        labels = tuple(sorted(spec.selector.labels.items()))
        for profile in spec.selector.profiles or (None,):
            where = DeviceFilter(labels=labels, profile=profile)
            offset = 0
            while True:
                page = self._devices.list(where, PageRequest(limit=MAX_PAGE_LIMIT, offset=offset))
                yield from (device for device in page.items if device.revoked_at is None)
                offset += len(page.items)
                if not page.items or offset >= page.total:
                    break

    def _info(self, record: RolloutRecord) -> RolloutInfo:
        counts = self._rollouts.state_counts(record.id)
        waves = [
            WaveInfo(
                position=wave.position,
                state=wave.state,
                device_count=sum(n for (position, _), n in counts.items() if position == wave.position),
                devices_by_state={
                    state: n for (position, state), n in sorted(counts.items()) if position == wave.position
                },
                started_at=wave.started_at,
                soak_started_at=wave.soak_started_at,
                finished_at=wave.finished_at,
                gates=wave.gates,
            )
            for wave in self._rollouts.waves(record.id)
        ]
        return RolloutInfo(
            id=record.id,
            model=record.model,
            version=record.version,
            mode=record.mode,
            state=record.state,
            current_wave=record.current_wave,
            baseline_version=record.baseline_version,
            spec=record.spec,
            reason=record.reason,
            created_at=record.created_at,
            created_by=record.created_by,
            updated_at=record.updated_at,
            finished_at=record.finished_at,
            promoted_at=record.promoted_at,
            device_count=sum(counts.values()),
            waves=waves,
        )


_PAST: dict[RolloutEvent, str] = {
    "pause": "paused",
    "resume": "resumed",
    "abort": "aborted",
    "rollback": "rolled_back",
    "promote": "promoted",
}


def _can_serve(release: ReleaseInfo, profile: str) -> bool:
    """Whether some profile of `profile`'s fallback chain has an artifact in `release`."""
    try:
        chain = {fallback.name for fallback in fallback_chain(profile)}
    except ProfileError:
        return False
    return any(target.hw_profile in chain for target in release.targets)


def _baseline(devices: list[DeviceInfo], model: str, version: str) -> str | None:
    """The version of `model` most of `devices` serve now (other than `version`), if any."""
    served = collections.Counter(
        d.active_models[model] for d in devices if d.active_models.get(model) not in (None, version)
    )
    return served.most_common(1)[0][0] if served else None
