"""`GET /api/v1/health` (no authentication): for load balancers, scripts and `edgefabric up` tests."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from control_plane.auth.access import PUBLIC
from control_plane.system.schemas import Health
from control_plane.system.services import HealthService
from control_plane.web.errors import error_responses


@get("/health", opt=PUBLIC, tags=["system"], responses=error_responses(429, 503))
async def check_health(health: NamedDependency[HealthService]) -> Health:
    return health.check()
