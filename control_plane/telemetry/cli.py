"""`edgefabric telemetry`: fleet telemetry through the REST API (a viewer token is enough).

Views: the summary per model version (default), a time series (`--series`, or `--device D`), or the
per-device breakdown (`--devices`, every page). Tables by default, the API's JSON with `--json`.
`--since`/`--until` take ISO 8601 (sent as RFC 3339) or a duration back from now (`90s`, `30m`,
`6h`, `7d`). Errors (an unreachable API, a 422 for a window that is too long) are one line and exit
code 1.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from control_plane.client import ApiClient, add_client_arguments
from control_plane.pagination import MAX_PAGE_LIMIT
from control_plane.telemetry.schemas import (
    DeviceTelemetry,
    DeviceTelemetryPage,
    SeriesPoint,
    TelemetrySeries,
    TelemetrySummary,
    VersionSummary,
)
from protocols.cli_support import EXIT_OK, render_table

_DURATION = re.compile(r"^(\d+)([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SUMMARY_HEADERS = (
    "MODEL", "VERSION", "DEVICES", "REQUESTS", "ERROR%", "P50 MS", "P95 MS", "SHADOW", "DRIFT PSI", "LAST",
)  # fmt: skip
_SERIES_HEADERS = ("START", "REQUESTS", "ERRORS", "ERROR%", "P50 MS", "P95 MS", "SHADOW")
_DEVICE_HEADERS = ("DEVICE", "REQUESTS", "ERROR%", "P50 MS", "P95 MS", "EVICTED", "LAST")


def add_telemetry_command(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    telemetry = commands.add_parser(
        "telemetry", help="fleet telemetry: summary per model version, time series, per-device numbers"
    )
    telemetry.add_argument("--model", help="only this model")
    telemetry.add_argument("--version", help="only this model version")
    telemetry.add_argument("--device", help="only this device (shows its time series)")
    telemetry.add_argument(
        "--since", type=time_argument, help="window start: ISO 8601 or a duration ago (6h)"
    )
    telemetry.add_argument("--until", type=time_argument, help="window end (default: now)")
    view = telemetry.add_mutually_exclusive_group()
    view.add_argument("--series", action="store_true", help="a time series instead of the summary")
    view.add_argument("--devices", action="store_true", help="one row per device instead of the summary")
    telemetry.add_argument(
        "--step", choices=("minute", "hour"), default="minute", help="series bucket (default: minute)"
    )
    add_client_arguments(telemetry, environ)
    telemetry.set_defaults(handler=_show)


def time_argument(text: str) -> str:
    """RFC 3339 for the API: from ISO 8601 (a date alone is its midnight; no offset: UTC), or from
    `<n>s|m|h|d`, the UTC time that long ago."""
    duration = _DURATION.match(text.strip())
    if duration:
        ago = timedelta(seconds=int(duration.group(1)) * _UNIT_S[duration.group(2)])
        return (datetime.now(UTC) - ago).isoformat(timespec="seconds")
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither ISO 8601 nor a duration like 6h") from None


def _show(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    window = {name: value for name in ("since", "until") if (value := getattr(args, name)) is not None}
    filters = {name: value for name in ("model", "version") if (value := getattr(args, name)) is not None}
    if args.series or args.device is not None:
        device = {} if args.device is None else {"device": args.device}
        query = {**device, **filters, **window, "step": args.step}
        series = client.call("GET", "/api/v1/telemetry/series", TelemetrySeries, query=query)
        _print(args, series, _SERIES_HEADERS, [_series_row(p) for p in series.points])
    elif args.devices:
        devices: list[DeviceTelemetry] = []
        while True:
            query = {**filters, **window, "limit": MAX_PAGE_LIMIT, "offset": len(devices)}
            page = client.call("GET", "/api/v1/telemetry/devices", DeviceTelemetryPage, query=query)
            devices.extend(page.items)
            if not page.items or len(devices) >= page.total:
                break
        _print(args, devices, _DEVICE_HEADERS, [_device_row(d) for d in devices])
    else:
        summary = client.call(
            "GET", "/api/v1/telemetry/summary", TelemetrySummary, query={**filters, **window}
        )
        _print(args, summary, _SUMMARY_HEADERS, [_summary_row(v) for v in summary.items])
    return EXIT_OK


def _print(args: argparse.Namespace, answer: object, headers: tuple[str, ...], rows: list[list[str]]) -> None:
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(answer), indent=2).decode())
    else:
        print(render_table(headers, rows))


def _summary_row(v: VersionSummary) -> list[str]:
    return [
        v.model, v.version, str(v.devices), str(v.count), _percent(v.error_rate), _ms(v.p50_latency_ms),
        _ms(v.p95_latency_ms), _fraction(v.shadow_agreement), _fraction(v.drift_psi), _minute(v.last_minute),
    ]  # fmt: skip


def _series_row(p: SeriesPoint) -> list[str]:
    return [
        _minute(p.start), str(p.count), str(p.error_count), _percent(p.error_rate), _ms(p.p50_latency_ms),
        _ms(p.p95_latency_ms), _fraction(p.shadow_agreement),
    ]  # fmt: skip


def _device_row(d: DeviceTelemetry) -> list[str]:
    return [
        d.device_id, str(d.count), _percent(d.error_rate), _ms(d.p50_latency_ms), _ms(d.p95_latency_ms),
        str(d.evicted_count), _minute(d.last_minute),
    ]  # fmt: skip


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")
