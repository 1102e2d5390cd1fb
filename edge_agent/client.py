"""A Python client for the agent's local inference API (OIP v2 over HTTP): stdlib urllib, synchronous.

For applications on the device; it needs only numpy and msgspec beside the standard library.

Invariants:
- Every failure is an `AgentClientError`: `status` is the HTTP status with the server's own error text
  as `detail`, or 0 when no HTTP answer came (connection refused, timeout, connection dropped).
- No proxy is ever used, whatever `http_proxy` says: the agent is on this host.
- Arrays come back in their OIP datatype and shape; nothing is cast.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from numpy.typing import ArrayLike, NDArray

from edge_agent import oip
from edge_agent.errors import AgentError
from protocols.errors import ProtocolError

DEFAULT_BASE_URL = "http://127.0.0.1:8484"


class AgentClientError(AgentError):
    """A call to the inference API failed; `status` 0 means the agent did not answer at all."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"agent answered {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.retryable = status in (0, 503)


@dataclass(frozen=True, slots=True)
class InferResult:
    model_name: str
    model_version: str | None
    outputs: dict[str, NDArray[Any]]


class AgentClient:
    """Calls one agent's inference API; each call is one HTTP request bounded by `timeout_s`."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def live(self) -> bool:
        """Whether the agent answers; `AgentClientError` (status 0) when nothing listens."""
        return self._is_ok("/v2/health/live")

    def ready(self) -> bool:
        """Whether the agent serves at least one model; `AgentClientError` (status 0) when nothing listens."""
        return self._is_ok("/v2/health/ready")

    def metadata(self, model: str) -> oip.ModelMetadata:
        body = self._call("GET", f"/v2/models/{_quote(model)}")
        try:
            return oip.model_metadata_decoder.decode(body)
        except ProtocolError as e:
            raise AgentClientError(200, e.message) from e

    def infer(
        self, model: str, inputs: Mapping[str, ArrayLike], outputs: Sequence[str] | None = None
    ) -> InferResult:
        """Run `model` on `inputs` (name -> array, batch first); return all outputs or those named."""
        body = self._call("POST", f"/v2/models/{_quote(model)}/infer", oip.encode_request(inputs, outputs))
        try:
            response, arrays = oip.decode_response(body)
        except oip.OipError as e:
            raise AgentClientError(200, e.message) from e
        return InferResult(response.model_name, response.model_version, arrays)

    def _is_ok(self, path: str) -> bool:
        try:
            self._call("GET", path)
        except AgentClientError as e:
            if e.status == 0:
                raise
            return False
        return True

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        url = self.base_url + path
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as e:
            with e:
                raise AgentClientError(e.code, _error_text(e.read(), e.reason)) from e
        except urllib.error.URLError as e:
            reason = f"cannot reach the agent at {self.base_url} ({e.reason}); is edgefabric-agent running?"
            raise AgentClientError(0, reason) from e
        except (TimeoutError, ConnectionError, http.client.HTTPException) as e:  # no or a broken answer
            raise AgentClientError(0, f"no answer from the agent at {url}: {e!r}") from e


def _error_text(body: bytes, reason: str) -> str:
    """The server's `{"error": ...}` text, or the HTTP reason when the body is not that."""
    try:
        return oip.error_decoder.decode(body).error
    except ProtocolError:
        return reason


def _quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")
