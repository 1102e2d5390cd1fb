"""`edgefabric devices list|get|label|revoke|token|tokens`: the fleet through the REST API.

Reading needs a viewer token, `label` and `revoke` an operator token, `token` and `tokens` (enrollment
tokens) an admin token. Output is a table (or `FIELD VALUE` rows for one device) for humans, JSON
with `--json`; errors are one line and exit code 1, through `run_cli`.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from control_plane.client import ApiClient, add_client_arguments
from control_plane.errors import ConfigError
from control_plane.fleet.schemas import (
    CreatedEnrollmentToken,
    CreateEnrollmentTokenRequest,
    DeviceInfo,
    DevicePage,
    EnrollmentTokenInfo,
    EnrollmentTokenPage,
    UpdateLabelsRequest,
)
from control_plane.pagination import MAX_PAGE_LIMIT
from protocols.cli_support import EXIT_OK, render_table

P = TypeVar("P", DevicePage, EnrollmentTokenPage)
T = TypeVar("T")
_DEVICE_HEADERS = ("ID", "PROFILE", "ONLINE", "LAST SEEN", "MODELS", "LABELS", "STATUS")
_TOKEN_HEADERS = ("ID", "NAME", "STATUS", "USES", "EXPIRES", "PROFILE", "LABELS")


def add_device_commands(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    devices = commands.add_parser("devices", help="enrolled devices and their enrollment tokens")
    actions = devices.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="devices, with filters")
    listing.add_argument("--label", action="append", metavar="KEY=VALUE", help="every one must match")
    listing.add_argument("--profile", help="hardware profile")
    liveness = listing.add_mutually_exclusive_group()
    liveness.add_argument("--online", dest="online", action="store_const", const="true")
    liveness.add_argument("--offline", dest="online", action="store_const", const="false")
    listing.add_argument("--model", metavar="NAME[:VERSION]", help="devices serving this model")
    add_client_arguments(listing, environ)
    listing.set_defaults(handler=_list)

    show = actions.add_parser("get", help="one device")
    show.add_argument("device_id", metavar="ID")
    add_client_arguments(show, environ)
    show.set_defaults(handler=_get)

    label = actions.add_parser("label", help="set (KEY=VALUE) or remove (KEY-) labels of a device")
    label.add_argument("device_id", metavar="ID")
    label.add_argument("changes", metavar="KEY=VALUE|KEY-", nargs="+")
    add_client_arguments(label, environ)
    label.set_defaults(handler=_label)

    revoke = actions.add_parser("revoke", help="cut a device off REST and the broker at once")
    revoke.add_argument("device_id", metavar="ID")
    add_client_arguments(revoke, environ)
    revoke.set_defaults(handler=_revoke)

    token = actions.add_parser("token", help="create an enrollment token; its secret is printed once")
    token.add_argument("--name", help="what it is for (letters, digits, . _ @ -)")
    token.add_argument("--ttl-hours", type=int, default=24, metavar="H", help="lifetime (24; max 168)")
    token.add_argument("--max-uses", type=int, default=1, metavar="N", help="devices it may enroll")
    token.add_argument("--label", action="append", metavar="KEY=VALUE", help="given to every device")
    token.add_argument("--profile", help="hardware profile given to every device")
    add_client_arguments(token, environ)
    token.set_defaults(handler=_create_token)

    tokens = actions.add_parser("tokens", help="enrollment tokens: active, expired, used and revoked")
    add_client_arguments(tokens, environ)
    tokens.set_defaults(handler=_list_tokens)


def _list(args: argparse.Namespace) -> int:
    filters: list[tuple[str, str]] = [("label", pair) for pair in args.label or ()]
    for name in ("profile", "online", "model"):
        if getattr(args, name) is not None:
            filters.append((name, getattr(args, name)))
    items = _all(ApiClient.from_args(args), "/api/v1/devices", DevicePage, filters)
    if args.json:
        _print_json(items)
    else:
        print(render_table(_DEVICE_HEADERS, [_device_row(device) for device in items]))
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    device = ApiClient.from_args(args).call("GET", _device_path(args.device_id), DeviceInfo)
    if args.json:
        _print_json(device)
    else:
        fields = msgspec.structs.asdict(device)
        rows = [[name, _text(value)] for name, value in fields.items()]
        print(render_table(("FIELD", "VALUE"), rows))
    return EXIT_OK


def _label(args: argparse.Namespace) -> int:
    patch: dict[str, str | None] = {}
    for change in args.changes:
        if change.endswith("-") and "=" not in change:
            patch[change[:-1]] = None
        else:
            key, value = _pair(change, "label")
            patch[key] = value
    body = _convert({"labels": patch}, UpdateLabelsRequest)
    path = f"{_device_path(args.device_id)}/labels"
    device = ApiClient.from_args(args).call("PATCH", path, DeviceInfo, body=body)
    if args.json:
        _print_json(device)
    else:
        print(f"device {device.id} labels: {_labels(device.labels) or '(none)'}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    device = ApiClient.from_args(args).call("POST", f"{_device_path(args.device_id)}/revoke", DeviceInfo)
    if args.json:
        _print_json(device)
    else:
        print(f"revoked device {device.id}: its REST credential and broker connection are refused")
    return EXIT_OK


def _create_token(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        "ttl_hours": args.ttl_hours,
        "max_uses": args.max_uses,
        "labels": dict(_pair(pair, "label") for pair in args.label or ()),
    }
    if args.name is not None:
        fields["name"] = args.name
    if args.profile is not None:
        fields["profile"] = args.profile
    request = _convert(fields, CreateEnrollmentTokenRequest)
    created = ApiClient.from_args(args).call(
        "POST", "/api/v1/enrollment-tokens", CreatedEnrollmentToken, body=request
    )
    if args.json:
        _print_json(created)
    else:
        print(render_table(_TOKEN_HEADERS, [_token_row(created)]))
        print(f"enrollment token (shown once): {created.token}")
        print(f"on the device: edgefabric-agent enroll --url {args.url} --token {created.token}")
    return EXIT_OK


def _list_tokens(args: argparse.Namespace) -> int:
    items = _all(ApiClient.from_args(args), "/api/v1/enrollment-tokens", EnrollmentTokenPage, [])
    if args.json:
        _print_json(items)
    else:
        print(render_table(_TOKEN_HEADERS, [_token_row(token) for token in items]))
    return EXIT_OK


def _all(client: ApiClient, path: str, page_type: type[P], filters: Sequence[tuple[str, str]]) -> list[Any]:
    """Every item of a paginated list (the query is built here: `label` repeats)."""
    items: list[Any] = []
    while True:
        query = urllib.parse.urlencode([*filters, ("limit", MAX_PAGE_LIMIT), ("offset", len(items))])
        page = client.call("GET", f"{path}?{query}", page_type)
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            return items


def _device_path(device_id: str) -> str:
    return f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}"


def _pair(text: str, what: str) -> tuple[str, str]:
    key, is_pair, value = text.partition("=")
    if not is_pair or not key:
        raise ConfigError("flags", f"{what}: expected KEY=VALUE, got {text!r}")
    return key, value


def _convert(fields: dict[str, Any], kind: type[T]) -> T:
    """Check flags against the request schema here, so a bad one is one line before any call."""
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as e:
        raise ConfigError("flags", str(e)) from e


def _device_row(device: DeviceInfo) -> list[object]:
    return [
        device.id,
        device.profile,
        "yes" if device.online else "no",
        _when(device.last_seen) or "never",
        _labels(device.active_models, separator=":"),
        _labels(device.labels),
        "revoked" if device.revoked_at else "enrolled",
    ]


def _token_row(token: EnrollmentTokenInfo) -> list[object]:
    return [
        token.id,
        token.name or "-",
        token.status.value,
        f"{token.use_count}/{token.max_uses}",
        _when(token.expires_at),
        token.profile or "-",
        _labels(token.labels),
    ]


def _labels(labels: Mapping[str, str], separator: str = "=") -> str:
    return ",".join(f"{key}{separator}{value}" for key, value in sorted(labels.items()))


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return _when(value) or ""
    if isinstance(value, dict):
        return _labels(value) or "-"
    return "-" if value is None else str(value)


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
