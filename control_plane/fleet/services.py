"""Devices: listing and filtering, labels, desired and reported state, revocation.

Invariants:
- A device credential sees only its own device: any other id is a 404, exactly as if it did not
  exist (`_visible`).
- Desired state revisions only grow: the next one is above both the last one written and the last
  one the device reported seeing, and writes for one device are serialized, so the broker never
  holds an older revision after a newer one. The broker write (KV, and the retained MQTT message
  for MQTT-only devices) happens first; the row, the stored document and the audit row commit
  after it, so a stored revision is one the device can read.
- Revocation refuses the device's REST credential at once (it is checked on every request) and
  asks the broker authority to cut its broker connection; asking again retries the broker part.
- `online` means a heartbeat within `online_window_s` (and not revoked), computed when read.
"""

from __future__ import annotations

import asyncio
import base64
import collections
from datetime import datetime, timedelta

from sqlite_utils import Database

from control_plane.audit.schemas import Actor
from control_plane.audit.services import AuditService
from control_plane.auth.schemas import DeviceIdentity, Identity
from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.clock import Clock
from control_plane.errors import ConflictError, InvalidArgumentError, NotFoundError, UnavailableError
from control_plane.fleet.repositories import DeviceRepository
from control_plane.fleet.schemas import (
    MAX_LABELS,
    DeviceFilter,
    DeviceInfo,
    DevicePage,
    DeviceRecord,
    PutDesiredStateRequest,
    UpdateLabelsRequest,
)
from control_plane.fleet.twins import TwinWriter
from control_plane.pagination import PageRequest
from protocols.codec import desired_state_decoder, encode, reported_state_decoder
from protocols.errors import FabricError
from protocols.messages import DesiredState, ReportedState
from protocols.transports.nats_bus import NatsBus

Caller = Identity | DeviceIdentity


class DeviceService:
    def __init__(
        self,
        db: Database,
        audit: AuditService,
        clock: Clock,
        *,
        twins: TwinWriter,
        bus: NatsBus | None,
        broker: BrokerAuthority | None,
        online_window_s: float,
    ) -> None:
        self._db = db
        self._devices = DeviceRepository(db)
        self._audit = audit
        self._clock = clock
        self._twins = twins
        self._bus = bus
        self._broker = broker
        self._online_window = timedelta(seconds=online_window_s)
        self._desired_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )

    # --- reading -----------------------------------------------------------------------------------

    def list(self, where: DeviceFilter, page: PageRequest) -> DevicePage:
        items, total = self._devices.page(
            where, online_since=self._online_since(), limit=page.limit, offset=page.offset
        )
        return DevicePage(items=items, total=total, limit=page.limit, offset=page.offset)

    def get(self, caller: Caller, device_id: str) -> DeviceInfo:
        self._visible(caller, device_id)
        return self._info(device_id)

    def desired(self, caller: Caller, device_id: str) -> DesiredState:
        """The last desired state written (revision 0 with no models before the first one)."""
        self._visible(caller, device_id)
        self._record(device_id)
        document = self._devices.twin(device_id, "desired")
        if document is None:
            return DesiredState(device_id=device_id, revision=0, issued_at=self._clock.now())
        return desired_state_decoder.decode(document)

    def reported(self, caller: Caller, device_id: str) -> ReportedState:
        self._visible(caller, device_id)
        self._record(device_id)
        document = self._devices.twin(device_id, "reported")
        if document is None:
            raise NotFoundError("reported state of device", device_id)
        return reported_state_decoder.decode(document)

    # --- changing ----------------------------------------------------------------------------------

    def patch_labels(self, actor: Actor, device_id: str, request: UpdateLabelsRequest) -> DeviceInfo:
        with self._db.atomic():
            self._record(device_id)
            labels = self._devices.labels(device_id)
            after = {key: value for key, value in {**labels, **request.labels}.items() if value is not None}
            if len(after) > MAX_LABELS:
                raise InvalidArgumentError("labels", f"a device has at most {MAX_LABELS} labels")
            self._devices.patch_labels(device_id, request.labels)
            self._audit.record(
                actor,
                "device.labels_changed",
                f"device:{device_id}",
                dict(request.labels),
            )
        return self._info(device_id)

    async def put_desired(
        self, actor: Actor, device_id: str, request: PutDesiredStateRequest
    ) -> DesiredState:
        """Write the next desired state of `device_id` to the broker, then record it."""
        async with self._desired_locks[device_id]:
            record = self._record(device_id)
            if record.revoked_at is not None:
                raise ConflictError(f"device {device_id!r} is revoked")
            revision = max(record.desired_revision, record.observed_revision or 0) + 1
            now = self._clock.now()
            desired = DesiredState(
                device_id=device_id, revision=revision, models=request.models, issued_at=now
            )
            await self._twins.put_desired(record.transport, desired)
            with self._db.atomic():
                self._devices.set_desired(device_id, revision, encode(desired), now)
                self._audit.record(
                    actor,
                    "device.desired_set",
                    f"device:{device_id}",
                    {
                        "revision": revision,
                        "models": ",".join(f"{a.model}={a.release.version}" for a in request.models),
                    },
                )
        return desired

    async def revoke(self, actor: Actor, device_id: str) -> DeviceInfo:
        """Revoke `device_id` (idempotent for REST; the broker part is retried on every call)."""
        with self._db.atomic():
            record = self._record(device_id)
            revoked_at = record.revoked_at or self._clock.now()
            if record.revoked_at is None:
                self._devices.set_revoked(device_id, revoked_at)
                self._audit.record(actor, "device.revoked", f"device:{device_id}")
        if self._broker is not None:
            if self._bus is None:
                raise UnavailableError("broker", "revoked for REST; no broker connection to revoke it there")
            try:
                await self._broker.revoke(self._bus, base64.b64decode(record.public_key), revoked_at)
            except FabricError as e:
                raise UnavailableError("broker", f"revoked for REST; broker revocation failed: {e}") from e
        return self._info(device_id)

    def render(self) -> str:
        """Fleet gauges for `/metrics` (a `MetricsSource`): devices enrolled, online, revoked."""
        enrolled, online, revoked = self._devices.counts(online_since=self._online_since())
        gauges = (
            ("enrolled", "Devices enrolled and not revoked.", enrolled),
            ("online", "Devices with a heartbeat inside the online window.", online),
            ("revoked", "Devices whose credentials were revoked.", revoked),
        )
        return "".join(
            f"# HELP edgefabric_devices_{name} {text}\n"
            f"# TYPE edgefabric_devices_{name} gauge\n"
            f"edgefabric_devices_{name} {value}\n"
            for name, text, value in gauges
        )

    # --- helpers -----------------------------------------------------------------------------------

    def _online_since(self) -> datetime:
        return self._clock.now() - self._online_window

    @staticmethod
    def _visible(caller: Caller, device_id: str) -> None:
        """A device credential sees its own device only; every other id does not exist for it."""
        if isinstance(caller, DeviceIdentity) and caller.device_id != device_id:
            raise NotFoundError("device", device_id)

    def _info(self, device_id: str) -> DeviceInfo:
        info = self._devices.info(device_id, online_since=self._online_since())
        if info is None:
            raise NotFoundError("device", device_id)
        return info

    def _record(self, device_id: str) -> DeviceRecord:
        record = self._devices.get(device_id)
        if record is None:
            raise NotFoundError("device", device_id)
        return record
