"""Liveness and reported state: heartbeats and twin reports into the device rows, in batches.

Sources: a core subscription on every device's heartbeat subject (MQTT devices' heartbeats arrive
there too: nats-server maps `fabric/v1/heartbeat/<id>` onto `fabric.v1.heartbeat.<id>`), a watch on
every `dev.*.reported` KV key, and `observe_reported` for reports heard over MQTT (`TwinWriter`).

Invariants:
- Observations are buffered in memory and written every `flush_interval_s` in one transaction, so
  10,000 devices heartbeating cost one short write per interval, not one per heartbeat. Per device
  only the latest observation is kept; `stop` flushes what is left.
- `last_seen` is the control plane's receive time (device clocks are not trusted) and never moves
  backwards; a device's active models are rewritten only when they change.
- A message whose subject names one device but whose body names another is dropped (a device can
  only speak for itself), as is anything that does not decode; unknown and revoked devices are
  ignored by the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from sqlite_utils import Database

from control_plane.clock import Clock
from control_plane.fleet.repositories import DeviceRepository
from control_plane.tasks import cancel_and_wait
from protocols import subjects
from protocols.codec import device_event_decoder, encode, reported_state_decoder
from protocols.errors import FabricError
from protocols.messages import Heartbeat, ReportedState
from protocols.transports.bus import StateWatch, Subscription
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)


class DeviceMonitor:
    """A `BackgroundWorker` keeping `last_seen`, active models and reported state up to date."""

    def __init__(self, db: Database, bus: NatsBus | None, clock: Clock, *, flush_interval_s: float) -> None:
        self._db = db
        self._devices = DeviceRepository(db)
        self._bus = bus
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        self._seen: dict[str, datetime] = {}
        self._models: dict[str, dict[str, str]] = {}
        self._known_models: dict[str, dict[str, str]] = {}
        self._reported: dict[str, ReportedState] = {}
        self._sources: list[Subscription | StateWatch] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self._bus is not None:
            heartbeats = await self._bus.subscribe(subjects.heartbeat())
            self._sources.append(heartbeats)
            reports = await self._bus.watch_state("reported")
            self._sources.append(reports)
            self._tasks += [
                asyncio.create_task(self._pump_heartbeats(heartbeats)),
                asyncio.create_task(self._pump_reports(reports)),
            ]
        self._tasks.append(asyncio.create_task(self._flush_periodically()))

    async def stop(self) -> None:
        tasks, sources, self._tasks, self._sources = self._tasks, self._sources, [], []
        for task in tasks:
            await cancel_and_wait(task)
        for source in sources:
            with contextlib.suppress(FabricError):
                await source.close()
        self.flush()

    # --- observations ------------------------------------------------------------------------------

    def observe_heartbeat(self, address: str, payload: bytes) -> None:
        try:
            event = device_event_decoder.decode(payload)
            device_id = subjects.device_of(address)
        except FabricError as e:
            logger.debug("dropping heartbeat on %s: %s", address, e)
            return
        if not isinstance(event, Heartbeat) or event.device_id != device_id:
            logger.debug("dropping a message on %s that is not this device's heartbeat", address)
            return
        self._seen[device_id] = self._clock.now()
        self._note_models(device_id, event.active_models)

    def observe_reported(self, device_id: str, payload: bytes) -> None:
        try:
            reported = reported_state_decoder.decode(payload)
        except FabricError as e:
            logger.debug("dropping reported state of %s: %s", device_id, e)
            return
        if reported.device_id != device_id:
            logger.debug("dropping reported state of %s that names %s", device_id, reported.device_id)
            return
        self._reported[reported.device_id] = reported
        self._note_models(
            reported.device_id,
            {
                status.model: status.current_version
                for status in reported.models
                if status.current_version is not None
            },
        )

    def _note_models(self, device_id: str, models: dict[str, str]) -> None:
        if self._known_models.get(device_id) != models:
            self._models[device_id] = dict(models)

    def flush(self) -> None:
        """Write what was observed since the last flush, in one transaction."""
        seen, models, reported = self._seen, self._models, self._reported
        if not (seen or models or reported):
            return
        self._seen, self._models, self._reported = {}, {}, {}
        try:
            with self._db.atomic():
                self._devices.record_heartbeats(seen)
                self._devices.replace_models(models)
                self._devices.record_reported(
                    (
                        (device_id, state.observed_revision, state.agent_version, encode(state))
                        for device_id, state in reported.items()
                    ),
                    self._clock.now(),
                )
        except BaseException:  # keep them for the next flush, behind anything newer
            self._seen, self._models = seen | self._seen, models | self._models
            self._reported = reported | self._reported
            raise
        self._known_models.update(models)

    # --- loops -------------------------------------------------------------------------------------

    async def _pump_heartbeats(self, subscription: Subscription) -> None:
        async for delivery in subscription:
            self.observe_heartbeat(delivery.address, delivery.payload)

    async def _pump_reports(self, watch: StateWatch) -> None:
        async for update in watch:
            if update.payload is not None and update.key.kind == "reported":
                self.observe_reported(update.key.device_id, update.payload)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                self.flush()
            except Exception:  # a failed write must not end liveness tracking; the next flush retries
                logger.exception("writing device observations failed")
