"""A small synchronous REST client for the `edgefabric` CLI (stdlib urllib; no extra dependency).

Where to connect: `--url`/`--token`, defaulting to `EDGEFABRIC_URL`/`EDGEFABRIC_TOKEN` (the
environment is read by `control_plane.cli` and handed in).

Invariant: every failure is an `ApiClientError` with one readable line: the API's own
`{"error", "detail"}` for an HTTP error, the OS reason when the API is unreachable.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from control_plane.errors import ApiClientError, ConfigError

T = TypeVar("T")

URL_ENV = "EDGEFABRIC_URL"
TOKEN_ENV = "EDGEFABRIC_TOKEN"


def add_client_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    parser.add_argument(
        "--url", default=environ.get(URL_ENV), help=f"control-plane API base URL (default: ${URL_ENV})"
    )
    parser.add_argument(
        "--token", default=environ.get(TOKEN_ENV), help=f"operator API token (default: ${TOKEN_ENV})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


class ApiClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiClient:
        if not args.url:
            raise ConfigError("flags", f"no API URL: pass --url or set {URL_ENV}")
        if not args.token:
            raise ConfigError("flags", f"no API token: pass --token or set {TOKEN_ENV}")
        return cls(args.url, args.token)

    def call(
        self,
        method: str,
        path: str,
        response_type: type[T],
        *,
        body: msgspec.Struct | None = None,
        query: Mapping[str, str | int] | None = None,
    ) -> T:
        """`method path` with an optional JSON body; the JSON answer decoded as `response_type`."""
        url = f"{self.url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(
            url,
            method=method,
            data=None if body is None else msgspec.json.encode(body),
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": "application/json",
                **({} if body is None else {"Content-Type": "application/json"}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            raise ApiClientError(url, _error_line(e), status=e.code) from e
        except (urllib.error.URLError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise ApiClientError(url, f"cannot reach the API: {reason}") from e
        try:
            return msgspec.json.decode(payload, type=response_type)
        except msgspec.DecodeError as e:
            raise ApiClientError(url, f"unexpected response: {e}") from e


def _error_line(error: urllib.error.HTTPError) -> str:
    """`HTTP 403 forbidden: requires role 'admin' ...` from the API's error body when there is one."""
    try:
        body: Any = json.loads(error.read())
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return f"HTTP {error.code} {body['error']}: {body.get('detail', '')}"
    return f"HTTP {error.code} {error.reason}"
