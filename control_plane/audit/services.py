"""Recording and reading the audit log.

Invariant: `record()` joins the caller's open transaction, so a change and its audit row commit or
roll back together; services call it inside `db.atomic()` around the change they audit.
"""

from __future__ import annotations

from sqlite_utils import Database

from control_plane.audit.repositories import AuditRepository
from control_plane.audit.schemas import Actor, AuditDetail, AuditPage
from control_plane.clock import Clock
from control_plane.pagination import PageRequest


class AuditService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._entries = AuditRepository(db)
        self._clock = clock

    def record(self, actor: Actor, action: str, target: str, detail: AuditDetail | None = None) -> None:
        self._entries.append(
            at=self._clock.now(), actor=actor, action=action, target=target, detail=detail or {}
        )

    def list(self, page: PageRequest) -> AuditPage:
        items, total = self._entries.page(limit=page.limit, offset=page.offset)
        return AuditPage(items=items, total=total, limit=page.limit, offset=page.offset)
