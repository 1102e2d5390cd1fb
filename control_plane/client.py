"""A small synchronous REST client for the `edgefabric` CLI (stdlib urllib; no extra dependency).

Where to connect: `--url`/`--token`, defaulting to `EDGEFABRIC_URL`/`EDGEFABRIC_TOKEN` (the
environment is read by `control_plane.cli` and handed in).

Invariant: every failure is an `ApiClientError` with one readable line: the API's own
`{"error", "detail"}` for an HTTP error, the OS reason when the API is unreachable.
"""

from __future__ import annotations

import argparse
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
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
        return self._send(request, response_type)

    def upload(
        self,
        path: str,
        response_type: type[T],
        *,
        fields: Mapping[str, str],
        files: Mapping[str, Path],
        progress: Callable[[int, int], None] | None = None,
    ) -> T:
        """POST a multipart/form-data body of `fields` and `files`, streamed from disk.

        `progress(sent_bytes, total_bytes)` is called after each chunk of the body goes out.
        """
        url = f"{self.url}{path}"
        body = MultipartBody(fields, files)
        request = urllib.request.Request(
            url,
            method="POST",
            data=body.chunks(progress),
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": "application/json",
                "Content-Type": body.content_type,
                "Content-Length": str(body.size),
            },
        )
        try:
            return self._send(request, response_type)
        except ApiClientError as e:
            cause = e.__cause__
            reason = cause.reason if isinstance(cause, urllib.error.URLError) else cause
            if isinstance(reason, BrokenPipeError | ConnectionResetError):
                raise ApiClientError(
                    url,
                    f"the API closed the connection during the upload of {body.size} bytes; "
                    "it is most likely over the server's upload limit (max_upload_bytes)",
                ) from e
            raise

    def _send(self, request: urllib.request.Request, response_type: type[T]) -> T:
        url = request.full_url
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


class MultipartBody:
    """A multipart/form-data body whose size is known up front and whose files are read in chunks."""

    CHUNK_BYTES = 256 * 1024

    def __init__(self, fields: Mapping[str, str], files: Mapping[str, Path]) -> None:
        self._boundary = f"edgefabric-{secrets.token_hex(16)}"
        self._parts: list[bytes | Path] = []
        for name, value in fields.items():
            self._parts += [self._header(name, None) + value.encode() + b"\r\n"]
        for name, file in files.items():
            self._parts += [self._header(name, file.name), file, b"\r\n"]
        self._parts.append(f"--{self._boundary}--\r\n".encode())

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self._boundary}"

    @property
    def size(self) -> int:
        return sum(part.stat().st_size if isinstance(part, Path) else len(part) for part in self._parts)

    def chunks(self, progress: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
        total, sent = self.size, 0
        for part in self._parts:
            pieces = _file_chunks(part, self.CHUNK_BYTES) if isinstance(part, Path) else iter([part])
            for piece in pieces:
                yield piece
                sent += len(piece)
                if progress is not None:
                    progress(sent, total)

    def _header(self, name: str, filename: str | None) -> bytes:
        disposition = f'form-data; name="{_quoted(name)}"'
        if filename is not None:
            disposition += f'; filename="{_quoted(filename)}"'
            kind = "\r\nContent-Type: application/octet-stream"
        else:
            kind = ""
        return f"--{self._boundary}\r\nContent-Disposition: {disposition}{kind}\r\n\r\n".encode()


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _file_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            yield chunk


def _error_line(error: urllib.error.HTTPError) -> str:
    """`HTTP 403 forbidden: requires role 'admin' ...` from the API's error body when there is one."""
    try:
        body: Any = json.loads(error.read())
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return f"HTTP {error.code} {body['error']}: {body.get('detail', '')}"
    return f"HTTP {error.code} {error.reason}"
