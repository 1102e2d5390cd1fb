"""`/api/v1/audit` (admin): read the audit log, newest first."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from control_plane.audit.schemas import AuditPage
from control_plane.audit.services import AuditService
from control_plane.auth.access import BEARER, requires
from control_plane.auth.tokens import Role
from control_plane.pagination import PageRequest
from control_plane.web.errors import error_responses


@get(
    "/audit",
    opt=requires(Role.ADMIN),
    security=BEARER,
    tags=["audit"],
    responses=error_responses(400, 401, 403, 429),
)
async def list_audit(page: NamedDependency[PageRequest], audit: NamedDependency[AuditService]) -> AuditPage:
    return audit.list(page)
