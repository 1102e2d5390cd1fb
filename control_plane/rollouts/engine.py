"""The rollout engine: a `BackgroundWorker` that carries every live rollout one bounded step per tick.

Each tick, for each rollout the engine acts on (running, halted, rolling back; oldest first), under
the rollout's lock:
- running: start the current wave; write the release into the desired state of at most
  `writes_per_tick` of its devices not yet assigned (their previous assignment is read and stored
  first); read the reported state of the devices waiting for an answer; judge the install gate
  (installing) or every gate after the soak (soaking); advance, complete, or halt.
- halted: enter rolling_back (every device the rollout touched is to be reverted).
- rolling_back: write each touched device's previous assignment back; a device still serving the
  rollout's version after seeing it gets the agent's `rollback` command (NATS devices, retried every
  `COMMAND_RETRY_S`); finish as rolled_back when every device has reverted or missed the deadline.

Invariants:
- Every step is persisted in SQLite before the next one starts, so after `kill -9` a restarted engine
  re-reads the rows and carries on. A device whose desired state was written just before a crash
  is recognised by its assignment (same release, mode and rollout id) and not written again; its
  previous assignment was stored before the write, so it is never confused with the rollout's own.
- Desired-state revisions come from the fleet area (monotonic per device), so rewriting after a
  restart never goes backwards.
- The broker being away stops a tick's writes (they are retried next tick); a revoked or removed
  device is skipped with the reason; one rollout's failure never stops another's step.
- Bounded work per tick: at most `writes_per_tick` desired-state writes, `READS_PER_TICK` reported
  states and `MAX_COMMANDS_PER_TICK` commands per rollout, at most `MAX_ROLLOUTS_PER_TICK` rollouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime, timedelta

from sqlite_utils import Database

from control_plane.audit.schemas import SYSTEM_ACTOR, Actor
from control_plane.auth.schemas import Identity
from control_plane.auth.tokens import Role
from control_plane.clock import Clock
from control_plane.errors import ConflictError, NotFoundError, UnavailableError
from control_plane.fleet.schemas import PutDesiredStateRequest
from control_plane.fleet.services import DeviceService
from control_plane.rollouts.convergence import (
    RevertStatus,
    has_assignment,
    install_outcome,
    previous_assignment,
    revert_outcome,
    with_assignment,
    with_previous,
)
from control_plane.rollouts.gates import (
    InstallCounts,
    VersionTelemetry,
    decide,
    install_gate,
    telemetry_gates,
)
from control_plane.rollouts.repositories import DeviceRecord, RolloutRecord, RolloutRepository, WaveRecord
from control_plane.rollouts.schemas import DeviceState, GateResult, RolloutState, WaveState
from control_plane.rollouts.services import RolloutService
from control_plane.rollouts.states import ENGINE_STATES, next_rollout_state, next_wave_state
from control_plane.tasks import cancel_and_wait
from control_plane.telemetry.services import SUMMARY_MAX_WINDOW, TelemetryService
from hardware_profiles.errors import ProfileError
from hardware_profiles.loader import load_profile
from protocols import subjects
from protocols.codec import command_reply_decoder, encode
from protocols.errors import FabricError
from protocols.messages import DesiredState, ModelAssignment, ReleaseRef, ReportedState, RollbackModel
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)

MAX_ROLLOUTS_PER_TICK = 20
MAX_COMMANDS_PER_TICK = 5
READS_PER_TICK = 500
"""Reported states read per rollout and step; a larger wave is scanned over several steps."""
COMMAND_TIMEOUT_S = 2.0
COMMAND_RETRY_S = 10.0
_MINUTE = timedelta(minutes=1)
_COMMAND_RETRY = timedelta(seconds=COMMAND_RETRY_S)
_CALLER = Identity(token_id=SYSTEM_ACTOR.id, name="rollout engine", role=Role.ADMIN, expires_at=None)
"""Who the engine is when it reads device twins (the fleet area's visibility check)."""


class RolloutEngine:
    def __init__(
        self,
        db: Database,
        rollouts: RolloutService,
        *,
        devices: DeviceService,
        telemetry: TelemetryService,
        bus: NatsBus,
        clock: Clock,
        tick_interval_s: float,
        writes_per_tick: int,
    ) -> None:
        self._db = db
        self._service = rollouts
        self._rows = RolloutRepository(db)
        self._devices = devices
        self._telemetry = telemetry
        self._bus = bus
        self._clock = clock
        self._tick_interval_s = tick_interval_s
        self._writes_per_tick = writes_per_tick
        self._task: asyncio.Task[None] | None = None
        self._scans: dict[str, str] = {}
        """Per rollout, the last device id read by the scan of waiting devices (resumed next step)."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-engine")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def tick(self) -> None:
        """One bounded step of every rollout the engine acts on."""
        for rollout_id in self._rows.ids_in(ENGINE_STATES, limit=MAX_ROLLOUTS_PER_TICK):
            async with self._service.lock(rollout_id):
                try:
                    await self._step(self._service.record(rollout_id))
                except UnavailableError as e:  # the broker is away: this step's writes wait a tick
                    logger.warning("rollout %s: %s; retrying next tick", rollout_id, e)
                except Exception:  # one rollout's trouble must not stop the others; retried next tick
                    logger.exception("rollout %s: step failed", rollout_id)

    async def _run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._tick_interval_s)

    async def _step(self, record: RolloutRecord) -> None:
        if record.state == RolloutState.RUNNING:
            await self._advance(record)
        elif record.state == RolloutState.HALTED:
            self._begin_rollback(record)
        elif record.state == RolloutState.ROLLING_BACK:
            await self._revert(record)

    # --- running -----------------------------------------------------------------------------------

    async def _advance(self, record: RolloutRecord) -> None:
        position = record.current_wave
        wave = self._rows.wave(record.id, position)
        if wave.state == WaveState.PENDING:
            wave = self._start_wave(record, wave)
        await self._assign_pending(record)
        self._observe_installs(record)
        counts = self._install_counts(record)
        install = install_gate(counts, record.spec.gates.min_install_success_ratio)
        now = self._clock.now()
        if wave.state == WaveState.INSTALLING:
            if install.status == "failed":
                self._halt(record, wave, [install])
            elif install.status == "passed":
                with self._db.atomic():
                    self._rows.update_wave(
                        record.id,
                        position,
                        state=next_wave_state(wave.state, "installed"),
                        soak_started_at=now,
                        gates=[install],
                    )
                    self._service.decide(
                        record.id,
                        position,
                        "installed",
                        "passed",
                        f"wave {position}: {install.reason}",
                        gates=[install],
                    )
            elif wave.gates != [install]:
                self._rows.update_wave(record.id, position, gates=[install])
        elif wave.state == WaveState.SOAKING:
            assert wave.soak_started_at is not None
            results = [install, *self._telemetry_gates(record, wave.soak_started_at, now)]
            decision = decide(results)
            if decision.status == "failed":
                self._halt(record, wave, results)
            elif decision.status == "passed":
                self._pass_wave(record, wave, results)
            else:
                self._rows.update_wave(record.id, position, gates=results)
                last = self._rows.last_decision(record.id)
                if last is None or (last.wave, last.kind, last.outcome) != (position, "gates", "waiting"):
                    waiting = "; ".join(f"{r.gate}: {r.reason}" for r in results if r.status == "waiting")
                    self._service.decide(
                        record.id,
                        position,
                        "gates",
                        "waiting",
                        f"wave {position} waiting: {waiting}",
                        gates=results,
                    )

    def _start_wave(self, record: RolloutRecord, wave: WaveRecord) -> WaveRecord:
        in_wave = self._rows.wave_profiles(record.id, wave.position)
        profiles = ", ".join(f"{n} {profile}" for profile, n in sorted(in_wave.items()))
        with self._db.atomic():
            self._rows.update_wave(
                record.id,
                wave.position,
                state=next_wave_state(wave.state, "started"),
                started_at=self._clock.now(),
            )
            self._service.decide(
                record.id,
                wave.position,
                "wave_started",
                "info",
                f"wave {wave.position} started: {sum(in_wave.values())} device(s) ({profiles or 'none new'})",
            )
        return self._rows.wave(record.id, wave.position)

    async def _assign_pending(self, record: RolloutRecord) -> None:
        pending = self._rows.devices(
            record.id, [DeviceState.PENDING], max_wave=record.current_wave, limit=self._writes_per_tick
        )
        assignment = ModelAssignment(
            model=record.model,
            release=ReleaseRef(
                model=record.model, version=record.version, model_counter=record.model_counter
            ),
            mode=record.mode,
            rollout_id=record.id,
        )
        deadline = timedelta(seconds=record.spec.device_deadline_s)
        for device in pending:
            desired = self._desired(record, device)
            if desired is None:
                continue
            if not device.is_previous_known:
                self._rows.set_previous(
                    record.id, device.device_id, previous_assignment(desired.models, record.model)
                )
            if has_assignment(desired.models, assignment):  # written just before a crash
                revision = desired.revision
            else:
                written = await self._put_desired(record, device, with_assignment(desired.models, assignment))
                if written is None:
                    continue
                revision = written
            now = self._clock.now()
            self._rows.update_device(
                record.id,
                device.device_id,
                now,
                only_if=DeviceState.PENDING,
                state=DeviceState.ASSIGNED,
                revision=revision,
                deadline_at=now + deadline,
                reason=None,
            )

    def _observe_installs(self, record: RolloutRecord) -> None:
        now = self._clock.now()
        waiting = self._scan(
            record, [DeviceState.ASSIGNED, DeviceState.SKIPPED], max_wave=record.current_wave
        )
        for device in waiting:
            if device.revision is None:  # skipped before it was ever written to
                continue
            outcome = install_outcome(
                self._reported(device.device_id),
                model=record.model,
                version=record.version,
                mode=record.mode,
                revision=device.revision,
            )
            if outcome is not None:
                is_installed, why = outcome
                state = DeviceState.INSTALLED if is_installed else DeviceState.FAILED
                if state != device.state:
                    self._rows.update_device(
                        record.id, device.device_id, now, only_if=device.state, state=state, reason=why
                    )
            elif device.state == DeviceState.ASSIGNED and device.deadline_at and now >= device.deadline_at:
                late = DeviceState.FAILED if record.spec.on_deadline == "failed" else DeviceState.SKIPPED
                self._rows.update_device(
                    record.id,
                    device.device_id,
                    now,
                    only_if=DeviceState.ASSIGNED,
                    state=late,
                    reason=f"no answer within {record.spec.device_deadline_s:g} s",
                )

    def _install_counts(self, record: RolloutRecord) -> InstallCounts:
        by_state: Counter[str] = Counter()
        for (wave, state), n in self._rows.state_counts(record.id).items():
            if wave <= record.current_wave:
                by_state[state] += n
        return InstallCounts(
            installed=by_state[DeviceState.INSTALLED],
            failed=by_state[DeviceState.FAILED],
            skipped=by_state[DeviceState.SKIPPED],
            waiting=by_state[DeviceState.PENDING] + by_state[DeviceState.ASSIGNED],
        )

    def _telemetry_gates(
        self, record: RolloutRecord, soak_started_at: datetime, now: datetime
    ) -> list[GateResult]:
        new = self._version_telemetry(record, record.version, soak_started_at, now)
        baseline = (
            None
            if record.baseline_version is None
            else self._version_telemetry(record, record.baseline_version, soak_started_at, now)
        )
        return telemetry_gates(
            record.spec.gates,
            mode=record.mode,
            new=new,
            baseline=baseline,
            latency_budget_ms=self._latency_budget_ms(record),
            soak_elapsed_s=(now - soak_started_at).total_seconds(),
        )

    def _version_telemetry(
        self, record: RolloutRecord, version: str, since: datetime, now: datetime
    ) -> VersionTelemetry:
        """Aggregates of `version` from the minute the soak began (records are per minute)."""
        until = now + _MINUTE
        since = max(since.replace(second=0, microsecond=0), until - SUMMARY_MAX_WINDOW + _MINUTE)
        summary = self._telemetry.summary(model=record.model, version=version, since=since, until=until)
        item = next((i for i in summary.items if i.model == record.model and i.version == version), None)
        if item is None:
            return VersionTelemetry(
                version=version,
                request_count=0,
                error_rate=None,
                p95_latency_ms=None,
                drift_psi=None,
                shadow_agreement=None,
            )
        return VersionTelemetry(
            version=version,
            request_count=item.count,
            error_rate=item.error_rate,
            p95_latency_ms=item.p95_latency_ms,
            drift_psi=item.drift_psi,
            shadow_agreement=item.shadow_agreement,
        )

    def _latency_budget_ms(self, record: RolloutRecord) -> float | None:
        """The loosest p95 budget of the rollout's profiles (the telemetry is fleet-wide)."""
        budgets = []
        for profile in self._rows.profiles(record.id):
            with contextlib.suppress(ProfileError):
                budgets.append(load_profile(profile).latency.p95_latency_ms)
        return max(budgets, default=None)

    def _pass_wave(self, record: RolloutRecord, wave: WaveRecord, results: list[GateResult]) -> None:
        now = self._clock.now()
        is_last = wave.position == len(self._rows.waves(record.id)) - 1
        with self._db.atomic():
            self._rows.update_wave(
                record.id,
                wave.position,
                state=next_wave_state(wave.state, "gates_passed"),
                finished_at=now,
                gates=results,
            )
            if is_last:
                self._rows.update(
                    record.id, now, state=next_rollout_state(record.state, "waves_done"), finished_at=now
                )
            else:
                self._rows.update(record.id, now, current_wave=wave.position + 1)
            self._service.decide(
                record.id,
                wave.position,
                "gates",
                "passed",
                f"wave {wave.position} passed"
                + ("; rollout completed" if is_last else f"; wave {wave.position + 1} next"),
                gates=results,
            )

    def _halt(self, record: RolloutRecord, wave: WaveRecord, results: list[GateResult]) -> None:
        now = self._clock.now()
        failed = "; ".join(f"{r.gate} {r.reason}" for r in results if r.status == "failed")
        reason = f"wave {wave.position} failed its gates: {failed}"
        with self._db.atomic():
            self._rows.update_wave(
                record.id,
                wave.position,
                state=next_wave_state(wave.state, "gates_failed"),
                finished_at=now,
                gates=results,
            )
            self._rows.update(
                record.id, now, state=next_rollout_state(record.state, "gate_failed"), reason=reason
            )
            self._service.decide(
                record.id, wave.position, "gates", "failed", f"{reason}; halted", gates=results
            )
        self._begin_rollback(self._service.record(record.id))

    # --- rolling back ------------------------------------------------------------------------------

    def _begin_rollback(self, record: RolloutRecord) -> None:
        with self._db.atomic():
            self._service.begin_rollback(record, actor="engine", reason=record.reason or "a gate failed")

    async def _revert(self, record: RolloutRecord) -> None:
        now = self._clock.now()
        assert record.rollback_started_at is not None
        deadline = record.rollback_started_at + timedelta(seconds=record.spec.device_deadline_s)
        writes = commands = 0
        for device in self._scan(record, [DeviceState.REVERTING]):
            if device.revision is None:
                if writes >= self._writes_per_tick:
                    continue
                writes += 1
                await self._write_previous(record, device, deadline)
                continue
            status = revert_outcome(
                self._reported(device.device_id),
                model=record.model,
                version=record.version,
                mode=record.mode,
                revision=device.revision,
            )
            if status == RevertStatus.REVERTED:
                self._rows.update_device(
                    record.id,
                    device.device_id,
                    now,
                    state=DeviceState.REVERTED,
                    reason="left " + record.version,
                )
            elif now >= deadline:
                self._rows.update_device(
                    record.id,
                    device.device_id,
                    now,
                    state=DeviceState.UNREVERTED,
                    reason=f"not confirmed within {record.spec.device_deadline_s:g} s"
                    + (f" ({device.reason})" if device.reason else ""),
                )
            elif (
                status == RevertStatus.NEEDS_COMMAND
                and commands < MAX_COMMANDS_PER_TICK
                and (device.command_sent_at is None or now - device.command_sent_at >= _COMMAND_RETRY)
            ):
                commands += 1
                await self._send_rollback(record, device)
        if not self._rows.devices(record.id, [DeviceState.REVERTING], limit=1):
            counts = Counter(
                d.state for d in self._rows.devices(record.id, [DeviceState.REVERTED, DeviceState.UNREVERTED])
            )
            with self._db.atomic():
                self._rows.update(
                    record.id, now, state=next_rollout_state(record.state, "reverted"), finished_at=now
                )
                self._service.decide(
                    record.id,
                    record.current_wave,
                    "rolled_back",
                    "info",
                    f"rolled back: {counts[DeviceState.REVERTED]} device(s) reverted, "
                    f"{counts[DeviceState.UNREVERTED]} not confirmed by the deadline",
                )

    async def _write_previous(self, record: RolloutRecord, device: DeviceRecord, deadline: datetime) -> None:
        """Write `device`'s previous assignment back (unless its desired state already has it)."""
        desired = self._desired(record, device)
        if desired is None:
            return
        models = with_previous(desired.models, record.model, device.previous)
        if tuple(desired.models) == models:  # never written to, or written back before a crash
            revision: int | None = desired.revision
        else:
            revision = await self._put_desired(record, device, models)
        if revision is not None:
            self._rows.update_device(
                record.id, device.device_id, self._clock.now(), revision=revision, deadline_at=deadline
            )

    async def _send_rollback(self, record: RolloutRecord, device: DeviceRecord) -> None:
        """Ask the agent to switch back to its previous model locally; the outcome lands in `reason`."""
        now = self._clock.now()
        if device.transport != "nats":
            reason = "still serving the release; the rollback command reaches NATS devices only"
        else:
            command = RollbackModel(
                command_id=f"{record.id}-{device.device_id}-{now:%Y%m%dT%H%M%S}", model=record.model
            )
            try:
                payload = await self._bus.request(
                    subjects.command(device.device_id, "rollback"),
                    encode(command),
                    timeout_s=COMMAND_TIMEOUT_S,
                )
                reply = command_reply_decoder.decode(payload)
                if reply.is_ok:
                    reason = f"rollback command: now serving {reply.detail.get('version', '?')}"
                else:
                    error = reply.error
                    reason = "rollback command refused" + (
                        f": {error.code}: {error.message}" if error else ""
                    )
            except FabricError as e:
                reason = f"rollback command not answered: {e}"
        self._rows.update_device(record.id, device.device_id, now, command_sent_at=now, reason=reason)

    def _scan(
        self, record: RolloutRecord, states: list[DeviceState], *, max_wave: int | None = None
    ) -> list[DeviceRecord]:
        """The next `READS_PER_TICK` devices in `states`, continuing where the last step stopped."""
        batch = self._rows.devices(
            record.id,
            states,
            max_wave=max_wave,
            limit=READS_PER_TICK,
            after_device_id=self._scans.pop(record.id, ""),
        )
        if len(batch) == READS_PER_TICK:
            self._scans[record.id] = batch[-1].device_id
        return batch

    # --- twins -------------------------------------------------------------------------------------

    def _desired(self, record: RolloutRecord, device: DeviceRecord) -> DesiredState | None:
        """The device's current desired state; None (and the device skipped) if it is gone."""
        try:
            return self._devices.desired(_CALLER, device.device_id)
        except NotFoundError as e:
            self._skip(record, device, f"no longer enrolled: {e}")
            return None

    async def _put_desired(
        self, record: RolloutRecord, device: DeviceRecord, models: tuple[ModelAssignment, ...]
    ) -> int | None:
        """The revision written; None if the device cannot take it (it is skipped). The broker
        being away is an `UnavailableError`: the step stops and the write is retried next tick."""
        actor = Actor(id=SYSTEM_ACTOR.id, name=f"rollout {record.id}")
        request = PutDesiredStateRequest(models=models)
        try:
            written = await self._devices.put_desired(actor, device.device_id, request)
        except (ConflictError, NotFoundError) as e:
            self._skip(record, device, str(e))
            return None
        return written.revision

    def _skip(self, record: RolloutRecord, device: DeviceRecord, reason: str) -> None:
        state = DeviceState.UNREVERTED if device.state == DeviceState.REVERTING else DeviceState.SKIPPED
        self._rows.update_device(record.id, device.device_id, self._clock.now(), state=state, reason=reason)

    def _reported(self, device_id: str) -> ReportedState | None:
        try:
            return self._devices.reported(_CALLER, device_id)
        except NotFoundError:
            return None
