"""`/api/v1/telemetry` (viewer): time series, fleet summaries and per-device breakdowns; thin adapters
over `TelemetryService`.

`since`/`until` are RFC 3339 (ISO 8601 date and time; without an offset it is UTC): anything else,
a bare number included, is a 400; a window the service refuses (reversed, too long) is a 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from litestar.openapi.spec.enums import OpenAPIFormat
from litestar.params import QueryParameter

from control_plane.auth.access import BEARER, requires
from control_plane.auth.tokens import Role
from control_plane.pagination import PageRequest
from control_plane.telemetry.schemas import DeviceTelemetryPage, Step, TelemetrySeries, TelemetrySummary
from control_plane.telemetry.services import TelemetryService
from control_plane.web.errors import error_responses

Since = Annotated[
    str | None, QueryParameter(description="window start, RFC 3339", format=OpenAPIFormat.DATE_TIME)
]
Until = Annotated[
    str | None, QueryParameter(description="window end (exclusive), RFC 3339", format=OpenAPIFormat.DATE_TIME)
]
ModelFilter = Annotated[str | None, QueryParameter(description="only this model")]
VersionFilter = Annotated[str | None, QueryParameter(description="only this model version")]


class TelemetryController(Controller):
    path = "/telemetry"
    tags = ("telemetry",)
    opt = requires(Role.VIEWER)
    security = BEARER

    @get("/series", responses=error_responses(400, 401, 403, 422, 429))
    async def get_series(
        self,
        telemetry: NamedDependency[TelemetryService],
        device: Annotated[str | None, QueryParameter(description="only this device")] = None,
        model: ModelFilter = None,
        version: VersionFilter = None,
        since: Since = None,
        until: Until = None,
        step: Annotated[Step, QueryParameter(description="bucket size")] = "minute",
    ) -> TelemetrySeries:
        """Per-bucket count, errors, error rate and p50/p95 latency (default: the last hour by minute,
        the last day by hour; at most a day of minutes or 31 days of hours)."""
        return telemetry.series(
            step=step,
            device=device,
            model=model,
            version=version,
            since=_moment("since", since),
            until=_moment("until", until),
        )

    @get("/summary", responses=error_responses(400, 401, 403, 422, 429))
    async def get_summary(
        self,
        telemetry: NamedDependency[TelemetryService],
        model: ModelFilter = None,
        version: VersionFilter = None,
        since: Since = None,
        until: Until = None,
    ) -> TelemetrySummary:
        """Fleet aggregates per model version: devices, count, error rate, p50/p95 latency, shadow
        agreement and output drift (PSI against the release's reference; null when unknown).
        Default window: the last day; at most 31 days."""
        return telemetry.summary(
            model=model, version=version, since=_moment("since", since), until=_moment("until", until)
        )

    @get("/devices", responses=error_responses(400, 401, 403, 422, 429))
    async def list_device_telemetry(
        self,
        page: NamedDependency[PageRequest],
        telemetry: NamedDependency[TelemetryService],
        model: ModelFilter = None,
        version: VersionFilter = None,
        since: Since = None,
        until: Until = None,
    ) -> DeviceTelemetryPage:
        """Per-device aggregates (by device id), with the records each device reported evicted."""
        return telemetry.devices(
            page, model=model, version=version, since=_moment("since", since), until=_moment("until", until)
        )


def _moment(name: str, text: str | None) -> datetime | None:
    """An RFC 3339 query value (Litestar would also take a number of epoch seconds: refuse it)."""
    if text is None:
        return None
    try:
        return msgspec.convert(text, datetime)
    except msgspec.ValidationError as e:
        raise ValidationException(
            detail=f"{name}: not an RFC 3339 time ({e})",
            extra=[{"message": str(e), "key": name, "source": "query"}],
        ) from e
