"""A static HTTP server over a signed repository, with Range support, for MQTT-only agent tests.

Serves `metadata/<file>` and `objects/sha256-<hex>` (the archive with that content hash), as the
control plane will; bound to 127.0.0.1 on a free port, in a background thread.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-$")


class RepositoryServer:
    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                path = server.resolve(self.path)
                if path is None:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                match = _RANGE.match(self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def resolve(self, url_path: str) -> Path | None:
        parts = url_path.lstrip("/").split("/")
        if len(parts) == 2 and parts[0] == "metadata" and re.fullmatch(r"[0-9A-Za-z.]+\.json", parts[1]):
            candidate = self.repo / "metadata" / parts[1]
            return candidate if candidate.is_file() else None
        if len(parts) == 2 and parts[0] == "objects" and parts[1].startswith("sha256-"):
            wanted = parts[1].removeprefix("sha256-")
            for archive in (self.repo / "targets").rglob("*.tar"):
                if hashlib.sha256(archive.read_bytes()).hexdigest() == wanted:
                    return archive
        return None

    def __enter__(self) -> RepositoryServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
