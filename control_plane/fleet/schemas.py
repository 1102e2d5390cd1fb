"""REST and service values of the fleet area.

Request bodies forbid unknown fields (no mass assignment: a client cannot set `id`, hashes or
`revoked_at`). Responses never carry a secret hash; `CreatedEnrollmentToken` carries its token once,
and the enrollment reply (the wire `EnrollmentReply`) the device's credentials once.
Labels are `key=value` pairs: keys `[A-Za-z0-9][A-Za-z0-9._/-]` up to 63, values `[A-Za-z0-9._-]`
up to 63 (possibly empty), at most `MAX_LABELS` per device.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from control_plane.auth.schemas import TokenName
from protocols.identifiers import ProfileName
from protocols.messages import ModelAssignment

MAX_LABELS = 32
MAX_TOKEN_TTL_HOURS = 7 * 24
DEFAULT_TOKEN_TTL_HOURS = 24

LabelKey = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}\Z", description="label key: [A-Za-z0-9._/-], 1-63"
    ),
]
LabelValue = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{0,63}\Z", description="label value: [A-Za-z0-9._-], 0-63")
]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=MAX_LABELS)]
Transport = Literal["nats", "mqtt"]


class EnrollmentTokenStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    USED = "used"
    """Every allowed use is spent."""
    REVOKED = "revoked"


class CreateEnrollmentTokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TokenName | None = None
    """What the token is for (a site, a batch of boxes); shown in lists."""
    ttl_hours: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKEN_TTL_HOURS)] = DEFAULT_TOKEN_TTL_HOURS
    max_uses: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1
    labels: Labels = {}
    """Given to every device enrolled with this token (they win over labels the device asks for)."""
    profile: ProfileName | None = None
    """The hardware profile of every device enrolled with this token (wins over the device's own)."""


class EnrollmentTokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str | None
    status: EnrollmentTokenStatus
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    max_uses: int
    use_count: int
    labels: dict[str, str]
    profile: str | None


class CreatedEnrollmentToken(EnrollmentTokenInfo, frozen=True, kw_only=True):
    token: str
    """`eft_<id>_<secret>`: shown only in this response; hand it to `edgefabric-agent enroll`."""


class EnrollmentTokenPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[EnrollmentTokenInfo]
    total: int
    limit: int
    offset: int


class EnrollmentTokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `enrollment_tokens` (internal: it carries the hash)."""

    id: str
    name: str | None
    token_hash: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    max_uses: int
    use_count: int
    labels: dict[str, str]
    profile: str | None

    def status(self, now: datetime) -> EnrollmentTokenStatus:
        """Revoked wins over used, used over expired."""
        if self.revoked_at is not None:
            return EnrollmentTokenStatus.REVOKED
        if self.use_count >= self.max_uses:
            return EnrollmentTokenStatus.USED
        if now >= self.expires_at:
            return EnrollmentTokenStatus.EXPIRED
        return EnrollmentTokenStatus.ACTIVE


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    labels: dict[str, str]
    profile: str
    online: bool
    """A heartbeat arrived within the last `heartbeat_interval_s * offline_after_missed_heartbeats`."""
    last_seen: datetime | None
    """When the control plane received the device's last heartbeat."""
    active_models: dict[str, str]
    """Model -> version served, from the latest heartbeat or reported state."""
    agent_version: str
    hostname: str
    transport: Transport
    desired_revision: int
    """Revision of the last desired state written for the device (0: none yet)."""
    observed_revision: int | None
    """The desired revision the device last reported having seen (None: never reported)."""
    enrolled_at: datetime
    revoked_at: datetime | None


class DevicePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[DeviceInfo]
    total: int
    limit: int
    offset: int


class DeviceFilter(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /api/v1/devices` filters; every one given must hold."""

    labels: tuple[tuple[str, str], ...] = ()
    profile: str | None = None
    is_online: bool | None = None
    model: str | None = None
    model_version: str | None = None
    """Only with `model`: the version it must serve."""


class UpdateLabelsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A JSON merge patch of the labels: a key set to a value sets it, set to null removes it."""

    labels: Annotated[dict[LabelKey, LabelValue | None], msgspec.Meta(max_length=MAX_LABELS)]


class PutDesiredStateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The complete desired model set of a device; the control plane assigns the next revision."""

    models: tuple[ModelAssignment, ...] = ()


class DeviceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `devices` (internal: it carries the credential hash)."""

    id: str
    public_key: str
    credential_id: str
    credential_hash: str
    profile: str
    hostname: str
    transport: Transport
    agent_version: str
    enrollment_token_id: str
    enrolled_at: datetime
    revoked_at: datetime | None = None
    last_seen: datetime | None = None
    desired_revision: int = 0
    observed_revision: int | None = None
