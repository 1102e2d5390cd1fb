"""`edgefabric releases create|list|get`: releases signed by the control plane, through its REST API.

Not to be confused with `edgefabric release ...` (singular, `model_compiler.signing.cli`), which signs
into a local TUF repository directory offline. Output is a table (or `key: value` lines) for humans,
JSON with `--json`; errors (a 409 for a released version, 503 without a broker) are one line and
exit code 1, through `run_cli`.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Mapping
from typing import Any

import msgspec

from control_plane.client import ApiClient, add_client_arguments
from control_plane.pagination import MAX_PAGE_LIMIT
from control_plane.releases.schemas import CreateReleaseRequest, ReleaseInfo, ReleasePage
from protocols.cli_support import EXIT_OK, render_table

_LIST_HEADERS = ("MODEL", "VERSION", "COUNTER", "PROFILES", "CREATED")
_TARGET_HEADERS = ("PROFILE", "PRECISION", "SIZE", "SHA256", "HOST P95 MS")


def add_release_commands(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    summary = "sign and list releases in the control plane (`release`, singular, signs locally, offline)"
    releases = commands.add_parser("releases", help=summary, description=summary)
    actions = releases.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", help="sign a compiled model version on the control plane and publish it to the fleet"
    )
    create.add_argument("model", metavar="MODEL")
    create.add_argument("--version", required=True, help="the model version to release")
    create.add_argument(
        "--compile-job", dest="compile_job_id", metavar="ID", help="default: the latest succeeded one"
    )
    add_client_arguments(create, environ)
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="releases, newest first")
    listing.add_argument("--model", help="only this model's releases")
    add_client_arguments(listing, environ)
    listing.set_defaults(handler=_list)

    show = actions.add_parser("get", help="one release with its signed targets")
    show.add_argument("model", metavar="MODEL")
    show.add_argument("version", metavar="VERSION")
    add_client_arguments(show, environ)
    show.set_defaults(handler=_get)


def _create(args: argparse.Namespace) -> int:
    request = CreateReleaseRequest(model=args.model, version=args.version, compile_job_id=args.compile_job_id)
    created = ApiClient.from_args(args).call("POST", "/api/v1/releases", ReleaseInfo, body=request)
    if args.json:
        _print_json(created)
    else:
        profiles = ", ".join(target.hw_profile for target in created.targets)
        print(
            f"released {created.model} version {created.version} "
            f"(model_counter {created.model_counter}, profiles {profiles})"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    filters: dict[str, str | int] = {} if args.model is None else {"model": args.model}
    items: list[ReleaseInfo] = []
    while True:
        page = client.call(
            "GET",
            "/api/v1/releases",
            ReleasePage,
            query={**filters, "limit": MAX_PAGE_LIMIT, "offset": len(items)},
        )
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            break
    if args.json:
        _print_json(items)
    else:
        rows = [
            [
                r.model,
                r.version,
                r.model_counter,
                ",".join(t.hw_profile for t in r.targets),
                r.created_at.strftime("%Y-%m-%d %H:%M"),
            ]
            for r in items
        ]
        print(render_table(_LIST_HEADERS, rows))
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    path = f"/api/v1/releases/{_segment(args.model)}/{_segment(args.version)}"
    release = ApiClient.from_args(args).call("GET", path, ReleaseInfo)
    if args.json:
        _print_json(release)
        return EXIT_OK
    print(f"model: {release.model}")
    print(f"version: {release.version}")
    print(f"model_counter: {release.model_counter}")
    print(f"targets_version: {release.targets_version}")
    print(f"compile_job_id: {release.compile_job_id}")
    print(f"created: {release.created_at.strftime('%Y-%m-%d %H:%M:%S')} by {release.created_by}")
    rows = [
        [t.hw_profile, t.precision, t.size_bytes, t.sha256, f"{t.host_latency.p95_ms:.3f}"]
        for t in release.targets
    ]
    print(render_table(_TARGET_HEADERS, rows))
    return EXIT_OK


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
