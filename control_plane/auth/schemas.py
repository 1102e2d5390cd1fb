"""REST and service values of the tokens area.

Request bodies forbid unknown fields: the allow-list is explicit, so a client cannot smuggle in
fields such as `id` or `token_hash` (mass assignment), and a typo is a 400 rather than ignored.
Responses never carry `token_hash`; only `CreatedToken` carries the secret, once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from control_plane.audit.schemas import Actor
from control_plane.auth.tokens import Role, TokenStatus

TokenName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$",
        description="letters, digits and . _ @ - (starting with a letter or digit)",
    ),
]


class CreateTokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TokenName
    role: Role
    ttl_days: Annotated[int, msgspec.Meta(ge=1, le=36500)] | None = None
    """Lifetime in days; default: the server's `default_token_ttl_days`, at most `max_token_ttl_days`."""


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    role: Role
    status: TokenStatus
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class CreatedToken(TokenInfo, frozen=True, kw_only=True):
    token: str
    """The bearer secret `efp_<id>_<secret>`. Shown only in this response; store it now."""


class TokenPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[TokenInfo]
    total: int
    limit: int
    offset: int


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """The caller behind a valid bearer token."""

    token_id: str
    name: str
    role: Role
    expires_at: datetime | None

    @property
    def actor(self) -> Actor:
        return Actor(id=self.token_id, name=self.name)


class DeviceIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """The caller behind a valid device credential (`efd_...`): an enrolled, unrevoked device.

    A device may call only routes declared with `control_plane.auth.access.DEVICE_ROUTE`, and on
    those only objects of its own (the route checks `device_id`).
    """

    device_id: str
    profile: str

    @property
    def actor(self) -> Actor:
        return Actor(id=f"device:{self.device_id}", name=self.device_id)


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `api_tokens` (internal: it carries the hash)."""

    id: str
    name: str
    role: Role
    token_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
