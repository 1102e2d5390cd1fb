"""The local inference API over real HTTP on loopback: a real digits model, uvicorn, urllib and http.client.

The API runs in its own event loop on a thread, as in the daemon, so that the synchronous client and
many client threads can call it the way applications on a device do.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import logging
import math
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from edge_agent.client import AgentClient, AgentClientError
from edge_agent.http_api import HttpApiBindError, create_app, serve_http
from edge_agent.serving import ModelServer, ServedModel
from hardware_profiles.runtimes import ExecutionSettings, Feeds, InferenceSession, open_session
from model_compiler.sample_models import SavedSample, digits_mlp
from protocols.manifest import (
    AcceptanceSpec,
    ArtifactFile,
    ArtifactManifest,
    LatencyStats,
    OutputHistogram,
    ValidationMetrics,
)

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 10.0
MODEL = "digits"


def manifest_for(saved: SavedSample, session: InferenceSession, *, name: str = MODEL) -> ArtifactManifest:
    data = saved.model_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return ArtifactManifest(
        model=name,
        version="1",
        hw_profile="cpu-x86_64",
        runtime="onnxruntime",
        artifact_format="onnx",
        precision="fp32",
        recipe="ort-basic-optimizations",
        model_file="model.onnx",
        files=(ArtifactFile(path="model.onnx", sha256=digest, size_bytes=len(data)),),
        inputs=session.inputs,
        outputs=session.outputs,
        validation=ValidationMetrics(
            samples=540, top1_agreement=1.0, max_abs_error=0.0, cosine_similarity=1.0, validated_on="cpu"
        ),
        host_latency=LatencyStats(p50_ms=0.1, p95_ms=0.2, runs=30, measured_on="x86_64"),
        acceptance=AcceptanceSpec(
            golden_file="model.onnx", max_abs_error=1e-4, min_top1_agreement=0.99, p95_latency_ms=5.0
        ),
        reference_histogram=OutputHistogram(kind="top1", counts=(54,) * 10),
        source_model_sha256=digest,
    )


class CountingSession:
    """The real session, recording how many samples each run was given (batches show as more than one)."""

    def __init__(self, inner: InferenceSession) -> None:
        self._inner = inner
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.description = inner.description
        self.is_cpu_equivalent = inner.is_cpu_equivalent
        self.samples_per_run: list[int] = []
        self._lock = threading.Lock()

    def run(self, feeds: Feeds) -> Feeds:
        with self._lock:
            self.samples_per_run.append(len(next(iter(feeds.values()))))
        return self._inner.run(feeds)


class BrokenSession(CountingSession):
    """A session whose runtime fails on every run, as a runtime can on a device."""

    def run(self, feeds: Feeds) -> Feeds:
        raise RuntimeError("accelerator fell off the bus")


class ApiThread:
    """A `ModelServer` and its HTTP API on a free loopback port, in an event loop on its own thread."""

    def __init__(self, models: Sequence[ServedModel], **app_options: Any) -> None:
        self._models = models
        self._options = app_options
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="http-api", daemon=True)
        self.url = ""

    def __enter__(self) -> ApiThread:
        self._thread.start()
        assert self._started.wait(TIMEOUT_S), "the API did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive(), "the API did not stop"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # handed to the test thread
            self._error = e
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = ModelServer(max_batch_size=8, max_queue_delay_ms=2)
        try:
            for model in self._models:
                await server.activate(model)
            async with serve_http(create_app(server, **self._options), "127.0.0.1", 0) as running:
                self.url = running.url
                self._started.set()
                await self._stop.wait()
        finally:
            await server.close()


def call(
    method: str, url: str, body: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange: status, headers (lower-case names), body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
    try:
        connection.request(method, parts.path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_of(status: int, headers: dict[str, str], body: bytes, expected_status: int) -> str:
    assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message
    return message


def infer_body(pixels: np.ndarray[Any, Any], **fields: Any) -> bytes:
    data = pixels.ravel().tolist()
    tensor = {"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], **fields}).encode()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def session(saved: SavedSample) -> InferenceSession:
    return open_session(saved.model_path, ExecutionSettings(runtime="onnxruntime"))


@pytest.fixture(scope="module")
def pixels(saved: SavedSample) -> np.ndarray[Any, Any]:
    with np.load(saved.validation_path, allow_pickle=False) as validation:
        return np.asarray(validation["pixels"], dtype=np.float32)


@pytest.fixture(scope="module")
def counting(session: InferenceSession) -> CountingSession:
    return CountingSession(session)


@pytest.fixture(scope="module")
def api(saved: SavedSample, session: InferenceSession, counting: CountingSession) -> Iterator[ApiThread]:
    broken = BrokenSession(session)
    models = [
        ServedModel(MODEL, manifest_for(saved, session), counting),
        ServedModel("broken", manifest_for(saved, session, name="broken"), broken),
    ]
    with ApiThread(models, status_provider=lambda: b'{"device_id": "dev-1"}') as running:
        yield running


@pytest.fixture
def client(api: ApiThread) -> AgentClient:
    return AgentClient(api.url, timeout_s=TIMEOUT_S)


def test_health_and_server_metadata_answer_over_loopback(api: ApiThread, client: AgentClient) -> None:
    assert client.live() and client.ready()
    assert urlsplit(api.url).hostname == "127.0.0.1"
    for path in ("/v2/health/live", "/v2/health/ready"):
        status, headers, body = call("GET", api.url + path)
        assert (status, headers["content-type"], body) == (200, "application/json", b"")
    status, headers, body = call("GET", api.url + "/v2")
    metadata = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert metadata["name"] == "edgefabric-agent" and metadata["version"] and metadata["extensions"] == []


def test_model_metadata_describes_the_served_session(api: ApiThread, client: AgentClient) -> None:
    metadata = client.metadata(MODEL)
    assert (metadata.name, metadata.versions, metadata.platform) == (MODEL, ("1",), "onnxruntime_onnx")
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("pixels", "FP32", (-1, 64))]
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [("logits", "FP32", (-1, 10))]
    status, _, body = call("GET", f"{api.url}/v2/models/{MODEL}/versions/1")
    assert status == 200 and json.loads(body)["name"] == MODEL
    message = error_of(*call("GET", f"{api.url}/v2/models/{MODEL}/versions/2"), 404)
    assert "'2'" in message and "serving 1" in message


def test_model_ready_is_200_for_a_served_model_and_404_otherwise(api: ApiThread) -> None:
    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1/ready"):
        assert call("GET", api.url + path)[0] == 200
    assert "not served" in error_of(*call("GET", f"{api.url}/v2/models/resnet/ready"), 404)
    error_of(*call("GET", f"{api.url}/v2/models/{MODEL}/versions/9/ready"), 404)


def test_infer_returns_the_logits_the_session_computes(
    api: ApiThread, client: AgentClient, session: InferenceSession, pixels: np.ndarray[Any, Any]
) -> None:
    batch = pixels[:5]
    expected = session.run({"pixels": batch})["logits"]
    result = client.infer(MODEL, {"pixels": batch})
    assert (result.model_name, result.model_version) == (MODEL, "1")
    assert list(result.outputs) == ["logits"]
    assert result.outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-6, atol=1e-6)
    assert (result.outputs["logits"].argmax(axis=1) == expected.argmax(axis=1)).all()

    body = infer_body(batch[:1], id="req-7", outputs=[{"name": "logits"}])
    status, headers, raw = call("POST", f"{api.url}/v2/models/{MODEL}/versions/1/infer", body)
    response = json.loads(raw)
    assert status == 200 and headers["content-type"] == "application/json"
    assert (response["model_name"], response["model_version"], response["id"]) == (MODEL, "1", "req-7")
    (output,) = response["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [1, 10])
    np.testing.assert_allclose(output["data"], expected[0], rtol=1e-6, atol=1e-6)


def test_unknown_model_is_a_404_with_a_json_error(api: ApiThread, client: AgentClient) -> None:
    message = error_of(*call("POST", f"{api.url}/v2/models/resnet/infer", infer_body(np.zeros((1, 64)))), 404)
    assert "'resnet'" in message and MODEL in message
    with pytest.raises(AgentClientError) as raised:
        client.metadata("resnet")
    assert raised.value.status == 404 and "'resnet'" in raised.value.detail


def pixels_tensor(
    name: str = "pixels", shape: tuple[int, ...] = (1, 64), datatype: str = "FP32", count: int | None = None
) -> dict[str, Any]:
    values = math.prod(shape) if count is None else count
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": [0.0] * values}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"inputs": [pixels_tensor(name="image")]}, "pixels"),
        ({"inputs": [pixels_tensor(shape=(1, 63))]}, "63"),
        ({"inputs": [pixels_tensor(shape=(64,))]}, "shape"),
        ({"inputs": [pixels_tensor(datatype="FP64")]}, "FP64"),
        ({"inputs": [pixels_tensor(count=60)]}, "60"),
        ({"inputs": [pixels_tensor()], "outputs": [{"name": "probs"}]}, "probs"),
        ("{not json", "inference request"),
    ],
    ids=["input-name", "shape", "rank", "datatype", "element-count", "output-name", "json"],
)
def test_bad_input_is_a_400_saying_what_is_wrong(api: ApiThread, body: Any, expected: str) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    message = error_of(*call("POST", f"{api.url}/v2/models/{MODEL}/infer", raw), 400)
    assert expected in message


def test_client_raises_the_servers_error_text_for_bad_input(client: AgentClient) -> None:
    with pytest.raises(AgentClientError) as raised:
        client.infer(MODEL, {"pixels": np.zeros((1, 64), np.float64)})
    assert raised.value.status == 400
    assert "FP64, model takes FP32" in raised.value.detail
    assert not raised.value.retryable


def test_unknown_route_is_404_and_wrong_method_is_405(api: ApiThread) -> None:
    for path in ("/", "/v1/models/digits", "/v2/", "/v2/models/digits/explain", "/v2/models/digits/versions"):
        error_of(*call("GET", api.url + path), 404)
    status, headers, body = call("GET", f"{api.url}/v2/models/{MODEL}/infer")
    assert "POST" in error_of(status, headers, body, 405) and headers["allow"] == "POST"
    status, headers, body = call("DELETE", f"{api.url}/v2/models/{MODEL}")
    error_of(status, headers, body, 405)
    assert headers["allow"] == "GET"


def test_body_declared_over_the_default_limit_is_refused_before_it_is_sent(api: ApiThread) -> None:
    parts = urlsplit(api.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
    try:
        connection.putrequest("POST", f"/v2/models/{MODEL}/infer")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(32 * 1024 * 1024 + 1))
        connection.endheaders()  # the body never follows: the answer must not wait for it
        response = connection.getresponse()
        headers = {"content-type": response.getheader("content-type", "")}
        message = error_of(response.status, headers, response.read(), 413)
    finally:
        connection.close()
    assert str(32 * 1024 * 1024) in message


def test_streamed_body_over_the_limit_is_refused_while_reading(
    saved: SavedSample, session: InferenceSession
) -> None:
    model = ServedModel(MODEL, manifest_for(saved, session), session)
    with ApiThread([model], max_body_bytes=1024) as small:
        chunks = iter([b" " * 700, b" " * 700])  # no Content-Length: sent chunked
        error_of(*call("POST", f"{small.url}/v2/models/{MODEL}/infer", chunks), 413)
        fits = infer_body(np.zeros((1, 8), np.float32))  # under the limit, so the model judges it
        assert "shape" in error_of(*call("POST", f"{small.url}/v2/models/{MODEL}/infer", fits), 400)


def test_ready_is_503_while_no_model_is_served() -> None:
    with ApiThread([]) as empty:
        client = AgentClient(empty.url, timeout_s=TIMEOUT_S)
        assert client.live()
        assert not client.ready()
        assert "no model" in error_of(*call("GET", f"{empty.url}/v2/health/ready"), 503)
        assert "none" in error_of(*call("GET", f"{empty.url}/v2/models/{MODEL}"), 404)
        error_of(*call("GET", f"{empty.url}/v2/agent/status"), 404)


def test_agent_status_is_the_daemons_json(api: ApiThread) -> None:
    status, headers, body = call("GET", f"{api.url}/v2/agent/status")
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == {"device_id": "dev-1"}


def test_runtime_failure_is_a_500_and_is_logged(api: ApiThread, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="edge_agent.http_api"):
        answer = call("POST", f"{api.url}/v2/models/broken/infer", infer_body(np.zeros((1, 64))))
    message = error_of(*answer, 500)
    assert "RuntimeError" in message
    assert any("accelerator fell off the bus" in (r.exc_text or "") for r in caplog.records)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    api: ApiThread, session: InferenceSession, counting: CountingSession, pixels: np.ndarray[Any, Any]
) -> None:
    threads, requests_per_thread = 32, 5
    runs_before = len(counting.samples_per_run)

    def work(worker: int) -> int:
        client = AgentClient(api.url, timeout_s=TIMEOUT_S)
        samples = 0
        for index in range(requests_per_thread):
            start = (worker * requests_per_thread + index) % (len(pixels) - 3)
            batch = pixels[start : start + 1 + (worker + index) % 3]  # 1 to 3 samples per request
            result = client.infer(MODEL, {"pixels": batch})
            expected = session.run({"pixels": batch})["logits"]
            assert result.outputs["logits"].shape == expected.shape
            np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-5, atol=1e-5)
            samples += len(batch)
        return samples

    with ThreadPoolExecutor(max_workers=threads) as pool:
        sent = sum(pool.map(work, range(threads), timeout=60))
    run = counting.samples_per_run[runs_before:]
    assert sum(run) == sent  # every sample ran exactly once, whatever the batching
    assert len(run) <= threads * requests_per_thread


def test_client_reports_a_refused_connection_as_status_0() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = AgentClient(f"http://127.0.0.1:{port}", timeout_s=TIMEOUT_S)
    with pytest.raises(AgentClientError) as raised:
        client.ready()
    assert raised.value.status == 0 and raised.value.retryable
    assert "cannot reach the agent" in str(raised.value) and "refused" in str(raised.value)


async def test_busy_port_is_a_typed_error_and_the_event_loop_lives_on() -> None:
    server = ModelServer()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(HttpApiBindError) as raised:
                async with serve_http(create_app(server), "127.0.0.1", port):
                    pass
        assert raised.value.port == port and raised.value.retryable
        async with serve_http(create_app(server), "127.0.0.1", 0) as running:
            assert running.port != 0
            status, _, _ = await asyncio.to_thread(call, "GET", running.url + "/v2/health/live")
            assert status == 200
    finally:
        await server.close()
