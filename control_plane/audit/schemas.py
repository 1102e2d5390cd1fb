"""REST and service values of the audit log."""

from __future__ import annotations

from datetime import datetime

import msgspec

AuditDetail = dict[str, str | int | float | bool | None]


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who made a change: a token (`id` = token id, `name` = its name) or the system itself."""

    id: str
    name: str


SYSTEM_ACTOR = Actor(id="system", name="edgefabric")


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: datetime
    actor: str
    actor_name: str
    action: str
    """Past tense, `<area>.<event>`: `token.created`, `token.revoked`."""
    target: str
    """`<kind>:<id>` of the object changed."""
    detail: AuditDetail


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AuditEntry]
    total: int
    limit: int
    offset: int
