"""`edgefabric rollouts create|list|status|pause|resume|abort|rollback|promote`, through the REST API.

`status` prints the rollout, its waves, the current wave's gates (value against threshold) and the
decisions with the numbers behind them, as tables (JSON with `--json`). `--wait` (on `create` and
`status`) polls until the rollout ends, with a progress line per change on stderr; it exits 0 when
the rollout completed and 1 when it ended rolled back or aborted, or did not end within
`--wait-timeout`. Errors are one line and exit code 1, through `run_cli`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from control_plane.client import ApiClient, add_client_arguments
from control_plane.errors import ConfigError
from control_plane.pagination import MAX_PAGE_LIMIT
from control_plane.rollouts.schemas import (
    RolloutInfo,
    RolloutPage,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    WaveStep,
)
from protocols.cli_support import EXIT_FAILED, EXIT_OK, Progress, render_table

POLL_INTERVAL_S = 1.0
DEFAULT_WAIT_TIMEOUT_S = 3600.0
_ENDED = {RolloutState.COMPLETED, RolloutState.ROLLED_BACK, RolloutState.ABORTED}
_WAVE = re.compile(r"^(?:(\d+)|(\d+(?:\.\d+)?)%)\Z")
_LABEL = re.compile(r"^([^=]+)=(.*)\Z")
_LIST_HEADERS = ("ID", "RELEASE", "MODE", "STATE", "WAVE", "DEVICES", "CREATED")
_WAVE_HEADERS = ("WAVE", "STATE", "DEVICES", "BY STATE", "STARTED", "SOAK FROM", "FINISHED")
_GATE_HEADERS = ("GATE", "STATUS", "VALUE", "THRESHOLD", "REASON")
_DECISION_HEADERS = ("#", "AT", "WAVE", "KIND", "OUTCOME", "BY", "SUMMARY")


def add_rollout_commands(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    summary = "roll releases out to the fleet in waves, with gates, pause, rollback and promotion"
    rollouts = commands.add_parser("rollouts", help=summary, description=summary)
    actions = rollouts.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="start rolling a release out")
    create.add_argument("model", metavar="MODEL")
    create.add_argument("--version", required=True, help="the released version to roll out")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="target selector")
    create.add_argument("--profile", action="append", default=[], help="only these hardware profiles")
    create.add_argument(
        "--wave",
        action="append",
        default=[],
        metavar="N|P%",
        help="a wave per flag, per profile: a device count or a cumulative percent; the last must be "
        "100%% (default: 1 then 100%%)",
    )
    create.add_argument("--mode", choices=["active", "shadow"], default="active")
    create.add_argument("--soak", dest="soak_s", type=float, help="seconds each wave soaks before its gates")
    create.add_argument("--min-requests", type=int, help="telemetry gates wait for this many requests")
    create.add_argument("--min-install-ratio", dest="min_install_success_ratio", type=float)
    create.add_argument("--max-error-rate", type=float)
    create.add_argument("--max-latency-regression-pct", type=float)
    create.add_argument("--max-drift-psi", type=float)
    create.add_argument("--min-shadow-agreement", type=float)
    create.add_argument(
        "--no-latency-budget", action="store_true", help="do not hold p95 to the profiles' budget"
    )
    create.add_argument("--device-deadline", dest="device_deadline_s", type=float, metavar="SECONDS")
    create.add_argument("--on-deadline", choices=["failed", "skipped"])
    _add_wait_arguments(create)
    add_client_arguments(create, environ)
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="rollouts, newest first")
    listing.add_argument("--model", help="only this model's rollouts")
    add_client_arguments(listing, environ)
    listing.set_defaults(handler=_list)

    status = actions.add_parser("status", help="a rollout's waves, gates and decisions")
    status.add_argument("rollout_id", metavar="ROLLOUT_ID")
    _add_wait_arguments(status)
    add_client_arguments(status, environ)
    status.set_defaults(handler=_status)

    for action, text in (
        ("pause", "stop assigning devices and judging gates until resumed"),
        ("resume", "carry on with a paused rollout"),
        ("abort", "stop for good; devices keep what they were assigned"),
        ("rollback", "give every device the rollout touched its previous model back"),
        ("promote", "make a shadow rollout active on the devices it reached and beyond"),
    ):
        control = actions.add_parser(action, help=text)
        control.add_argument("rollout_id", metavar="ROLLOUT_ID")
        add_client_arguments(control, environ)
        control.set_defaults(handler=_control, control=action)


def _add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="poll until the rollout ends (exit 1 unless completed)"
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up after this",
    )


def spec_from_args(args: argparse.Namespace) -> RolloutSpec:
    """The request body `create` sends (flags left out keep the API's defaults)."""
    labels: dict[str, str] = {}
    for label in args.label:
        match = _LABEL.fullmatch(label)
        if match is None:
            raise ConfigError("flags", f"--label {label!r}: expected KEY=VALUE")
        labels[match.group(1)] = match.group(2)
    gate_fields = (
        "soak_s",
        "min_requests",
        "min_install_success_ratio",
        "max_error_rate",
        "max_latency_regression_pct",
        "max_drift_psi",
        "min_shadow_agreement",
    )
    gates: dict[str, Any] = {f: getattr(args, f) for f in gate_fields if getattr(args, f) is not None}
    if args.no_latency_budget:
        gates["check_latency_budget"] = False
    fields: dict[str, Any] = {
        "model": args.model,
        "version": args.version,
        "selector": {"labels": labels, "profiles": args.profile},
        "gates": gates,
        "mode": args.mode,
    }
    if args.wave:
        fields["waves"] = [_wave(text) for text in args.wave]
    for name in ("device_deadline_s", "on_deadline"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    try:
        return msgspec.convert(fields, RolloutSpec)
    except msgspec.ValidationError as e:
        raise ConfigError("flags", str(e)) from e


def _wave(text: str) -> WaveStep:
    match = _WAVE.fullmatch(text.strip())
    if match is None:
        raise ConfigError("flags", f"--wave {text!r}: expected a device count (5) or a percent (25%)")
    count, percent = match.groups()
    return WaveStep(count=int(count)) if count is not None else WaveStep(percent=float(percent))


def _create(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    created = client.call("POST", "/api/v1/rollouts", RolloutStatus, body=spec_from_args(args))
    if not args.wait:
        _print_status(created, as_json=args.json)
        return EXIT_OK
    print(f"rollout {created.id}: {created.model} {created.version} to {created.device_count} device(s)")
    return _wait(client, created.id, args)


def _list(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    filters: dict[str, str | int] = {} if args.model is None else {"model": args.model}
    items: list[RolloutInfo] = []
    while True:
        page = client.call(
            "GET",
            "/api/v1/rollouts",
            RolloutPage,
            query={**filters, "limit": MAX_PAGE_LIMIT, "offset": len(items)},
        )
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            break
    if args.json:
        _print_json(items)
        return EXIT_OK
    rows = [
        [
            r.id,
            f"{r.model}/{r.version}",
            r.mode,
            r.state.value,
            f"{r.current_wave + 1}/{len(r.waves)}",
            r.device_count,
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for r in items
    ]
    print(render_table(_LIST_HEADERS, rows))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    if args.wait:
        return _wait(client, args.rollout_id, args)
    _print_status(_get(client, args.rollout_id), as_json=args.json)
    return EXIT_OK


def _control(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    path = f"/api/v1/rollouts/{_segment(args.rollout_id)}/{args.control}"
    status = client.call("POST", path, RolloutStatus)
    if args.json:
        _print_json(status)
    else:
        print(f"rollout {status.id}: {status.state.value}" + (f" ({status.reason})" if status.reason else ""))
    return EXIT_OK


def _wait(client: ApiClient, rollout_id: str, args: argparse.Namespace) -> int:
    """Poll until the rollout ends or `--wait-timeout`; one progress line whenever something changed."""
    deadline = time.monotonic() + args.wait_timeout
    status = _get(client, rollout_id)
    progress = Progress(len(status.waves))
    shown = ""
    try:
        while True:
            progress.done = sum(1 for wave in status.waves if wave.state.value == "passed")
            line = _progress_line(status)
            if line != shown:
                progress.step(status.state.value, line)
                shown = line
            if status.state in _ENDED or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
            status = _get(client, rollout_id)
    finally:
        progress.close()
    _print_status(status, as_json=args.json)
    if status.state not in _ENDED:
        print(
            f"rollout {rollout_id} still {status.state.value} after {args.wait_timeout:g} s", file=sys.stderr
        )
    return EXIT_OK if status.state == RolloutState.COMPLETED else EXIT_FAILED


def _progress_line(status: RolloutStatus) -> str:
    wave = status.waves[min(status.current_wave, len(status.waves) - 1)]
    counts = ", ".join(f"{n} {state}" for state, n in wave.devices_by_state.items())
    waiting = next((g.reason for g in wave.gates if g.status == "waiting"), None)
    return f"wave {wave.position + 1}/{len(status.waves)} {wave.state.value}: {counts}" + (
        f"; {waiting}" if waiting else ""
    )


def _get(client: ApiClient, rollout_id: str) -> RolloutStatus:
    return client.call("GET", f"/api/v1/rollouts/{_segment(rollout_id)}", RolloutStatus)


def _print_status(status: RolloutStatus, *, as_json: bool) -> None:
    if as_json:
        _print_json(status)
        return
    print(f"rollout: {status.id}")
    print(f"release: {status.model} {status.version} ({status.mode})")
    print(f"state: {status.state.value}" + (f" ({status.reason})" if status.reason else ""))
    print(f"baseline: {status.baseline_version or 'none'}")
    print(f"devices: {status.device_count}")
    print()
    print(
        render_table(
            _WAVE_HEADERS,
            [
                [
                    w.position,
                    w.state.value,
                    w.device_count,
                    " ".join(f"{state}={n}" for state, n in w.devices_by_state.items()),
                    _time(w.started_at),
                    _time(w.soak_started_at),
                    _time(w.finished_at),
                ]
                for w in status.waves
            ],
        )
    )
    gates = next((w.gates for w in reversed(status.waves) if w.gates), [])
    if gates:
        print()
        print(
            render_table(
                _GATE_HEADERS,
                [[g.gate, g.status, _number(g.value), _number(g.threshold), g.reason] for g in gates],
            )
        )
    print()
    print(
        render_table(
            _DECISION_HEADERS,
            [
                [d.seq, _time(d.at), "" if d.wave is None else d.wave, d.kind, d.outcome, d.actor, d.summary]
                for d in status.decisions
            ],
        )
    )


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%H:%M:%S")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
