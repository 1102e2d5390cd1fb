"""Calls to an agent's local inference API (Open Inference Protocol v2 over HTTP), as an application on
the device makes them: the held-out checks that report accuracy, and the background traffic whose
telemetry the rollout gates judge.

The control plane may not import the agent, so this speaks the public protocol itself (the same JSON
Triton or KServe clients send) over one keep-alive `http.client` connection per agent and thread.

Invariants:
- A failed call never raises out of `check` or `Traffic`: it is counted (`errors`) with the first reason
  kept, so a step can say what went wrong.
- `Traffic` is one daemon thread that sends at most one request per agent every `period_s`, and it is
  stopped and joined (bounded) when its block ends.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import msgspec
import numpy as np
from numpy.typing import NDArray

from protocols.messages import ModelStatus

REQUEST_TIMEOUT_S = 10.0
_JOIN_TIMEOUT_S = 15.0


class _Tensor(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: list[float]


class _InferRequest(msgspec.Struct, frozen=True, kw_only=True):
    inputs: tuple[_Tensor, ...]


class _InferResponse(msgspec.Struct, frozen=True, kw_only=True):
    model_name: str
    model_version: str | None = None
    outputs: tuple[_Tensor, ...]


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of `GET /v2/agent/status` the demo reads (others are ignored)."""

    device_id: str
    is_connected: bool
    models: tuple[ModelStatus, ...] = ()

    def serving(self, model: str) -> str | None:
        """The version of `model` the agent serves (its `current` link), or None."""
        return next((m.current_version for m in self.models if m.model == model), None)


class AgentCallError(Exception):
    """One call to the agent failed (no answer, an HTTP error, or an answer that is not OIP)."""


class _NoAnswerError(AgentCallError):
    pass


class AgentEndpoint:
    """One agent's API at `http://127.0.0.1:<port>`; not thread-safe (one per thread)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: http.client.HTTPConnection | None = None

    def status(self) -> AgentStatus | None:
        """The agent's status, or None while it does not answer."""
        try:
            return msgspec.json.decode(self._call("GET", "/v2/agent/status"), type=AgentStatus)
        except (AgentCallError, msgspec.DecodeError):
            return None

    def infer(self, model: str, input_name: str, pixels: NDArray[np.float32]) -> tuple[str | None, int]:
        """Classify one image; returns (the version that answered, the top-1 class)."""
        request = _InferRequest(
            inputs=(_Tensor(name=input_name, shape=(1, pixels.size), datatype="FP32", data=pixels.tolist()),)
        )
        body = self._call("POST", f"/v2/models/{model}/infer", msgspec.json.encode(request))
        try:
            response = msgspec.json.decode(body, type=_InferResponse)
        except msgspec.DecodeError as e:
            raise AgentCallError(f"not an OIP answer: {e}") from e
        logits = response.outputs[0].data if response.outputs else []
        if not logits:
            raise AgentCallError("the answer holds no logits")
        return response.model_version, int(np.argmax(logits))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        is_reused = self._connection is not None
        try:
            return self._exchange(method, path, body)
        except _NoAnswerError:
            if not is_reused:
                raise
            return self._exchange(method, path, body)  # the agent may have closed an idle connection

    def _exchange(self, method: str, path: str, body: bytes | None) -> bytes:
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise _NoAnswerError(f"no answer from the agent on 127.0.0.1:{self.port}: {e!r}") from e
        if response.status != 200:
            raise AgentCallError(f"HTTP {response.status}: {payload[:200].decode(errors='replace')}")
        return payload


def agent_status(port: int) -> AgentStatus | None:
    """The status of the agent on `port` (one request), or None while it does not answer."""
    endpoint = AgentEndpoint(port)
    try:
        return endpoint.status()
    finally:
        endpoint.close()


@dataclass
class CheckResult:
    """Held-out images sent to one agent and what came back."""

    requests: int = 0
    correct: int = 0
    errors: int = 0
    first_error: str | None = None
    versions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    """Round trips of the answered requests, as the calling application sees them."""

    @property
    def accuracy(self) -> float:
        answered = self.requests - self.errors
        return self.correct / answered if answered else 0.0

    @property
    def p95_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else None


def check(
    port: int, model: str, input_name: str, pixels: NDArray[np.float32], labels: NDArray[np.int64]
) -> CheckResult:
    """Send every image of `pixels` to the agent on `port`, one request each, and score the answers."""
    endpoint = AgentEndpoint(port)
    result = CheckResult()
    try:
        for image, label in zip(pixels, labels, strict=True):
            result.requests += 1
            started = time.perf_counter()
            try:
                version, top1 = endpoint.infer(model, input_name, image)
            except AgentCallError as e:
                result.errors += 1
                result.first_error = result.first_error or str(e)
                continue
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.versions[version or "?"] += 1
            result.correct += int(top1 == int(label))
    finally:
        endpoint.close()
    return result


class Traffic:
    """Background requests to every agent (cycling through `pixels`) while the block runs, so each
    model version that serves produces real telemetry for the gates."""

    def __init__(
        self, ports: Sequence[int], model: str, input_name: str, pixels: NDArray[np.float32], period_s: float
    ) -> None:
        self._ports = list(ports)
        self._model = model
        self._input_name = input_name
        self._pixels = pixels
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, name="demo-traffic", daemon=True)
        self.sent: Counter[int] = Counter()
        """Requests sent per agent port (answered or not)."""
        self.failed: Counter[int] = Counter()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=_JOIN_TIMEOUT_S)

    def _send(self) -> None:
        endpoints = [AgentEndpoint(port) for port in self._ports]
        index = 0
        with _closing_all(endpoints):
            while not self._stop.is_set():
                image = self._pixels[index % len(self._pixels)]
                for endpoint in endpoints:
                    self.sent[endpoint.port] += 1
                    try:
                        endpoint.infer(self._model, self._input_name, image)
                    except AgentCallError:  # no model yet (404), or a restart: the gates count the rest
                        self.failed[endpoint.port] += 1
                index += 1
                self._stop.wait(self._period_s)


@contextlib.contextmanager
def _closing_all(endpoints: list[AgentEndpoint]) -> Iterator[list[AgentEndpoint]]:
    try:
        yield endpoints
    finally:
        for endpoint in endpoints:
            endpoint.close()
