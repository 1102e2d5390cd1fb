"""`edgefabric tokens create|list|revoke`: operator API tokens through the REST API (admin token needed)."""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from control_plane.auth.schemas import CreatedToken, CreateTokenRequest, TokenInfo, TokenPage
from control_plane.auth.tokens import Role
from control_plane.client import ApiClient, add_client_arguments
from control_plane.pagination import MAX_PAGE_LIMIT
from protocols.cli_support import EXIT_OK, render_table

_HEADERS = ("ID", "NAME", "ROLE", "STATUS", "CREATED", "EXPIRES", "LAST USED")


def add_token_commands(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    tokens = commands.add_parser("tokens", help="create, list and revoke operator API tokens")
    actions = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="issue a token; its secret is printed once")
    create.add_argument("--name", required=True, help="who or what uses it (letters, digits, . _ @ -)")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--ttl-days", type=int, metavar="D", help="lifetime (default: the server's)")
    add_client_arguments(create, environ)
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="all tokens: active, expired and revoked")
    add_client_arguments(listing, environ)
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("token_id", metavar="ID")
    add_client_arguments(revoke, environ)
    revoke.set_defaults(handler=_revoke)


def _create(args: argparse.Namespace) -> int:
    request = CreateTokenRequest(name=args.name, role=Role(args.role), ttl_days=args.ttl_days)
    created = ApiClient.from_args(args).call("POST", "/api/v1/tokens", CreatedToken, body=request)
    if args.json:
        _print_json(created)
    else:
        print(render_table(_HEADERS, [_row(created)]))
        print(f"token (shown once, store it now): {created.token}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    items: list[TokenInfo] = []
    while True:
        page = client.call(
            "GET", "/api/v1/tokens", TokenPage, query={"limit": MAX_PAGE_LIMIT, "offset": len(items)}
        )
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            break
    if args.json:
        _print_json(items)
    else:
        print(render_table(_HEADERS, [_row(token) for token in items]))
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    path = f"/api/v1/tokens/{urllib.parse.quote(args.token_id, safe='')}/revoke"
    revoked = ApiClient.from_args(args).call("POST", path, TokenInfo)
    if args.json:
        _print_json(revoked)
    else:
        print(f"revoked token {revoked.id} ({revoked.name}, {revoked.role.value})")
    return EXIT_OK


def _row(token: TokenInfo) -> list[object]:
    return [
        token.id,
        token.name,
        token.role.value,
        token.status.value,
        _when(token.created_at),
        _when(token.expires_at) or "never",
        _when(token.last_used_at) or "-",
    ]


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
