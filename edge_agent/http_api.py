"""The agent's local inference API: Open Inference Protocol v2 over HTTP, an ASGI app run by uvicorn.

Routes (OIP v2 REST, plus one of ours):
    GET  /v2                                            server metadata
    GET  /v2/health/live                                200 while the process answers
    GET  /v2/health/ready                               200 when a model is served, else 503
    GET  /v2/models/{name}[/versions/{v}]               model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready         200 when served, else 404
    POST /v2/models/{name}[/versions/{v}]/infer         inference
    GET  /v2/agent/status                               the daemon's status JSON (when it gives one)

Invariants:
- Every response has `Content-Type: application/json`; health answers have an empty body, as OIP says.
  Every error is the protocol's `{"error": "..."}`: 400 bad request or input, 404 unknown model, version
  or route, 405 wrong method (with `Allow`), 413 body over `max_body_bytes` (refused from its declared
  length, or while reading, before the rest is held in memory), 503 not ready. A 500 is only an
  unexpected failure, and it is logged with its traceback.
- A version in the path must be the served version. A model swapped between that check and the run
  answers with the new version, and `model_version` in the response says so.
- Inference runs in the `ModelServer`'s threads; JSON decoding and encoding run on the event loop.
- `serve_http` binds the socket itself (loopback by default), so a busy port is an `HttpApiBindError`
  rather than uvicorn's `sys.exit`, which would stop the daemon's event loop; uvicorn installs no
  signal handlers (the daemon owns SIGINT/SIGTERM) and leaves logging configuration to the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import uvicorn

from edge_agent import oip
from edge_agent.errors import AgentError, InvalidInferenceInputError, ModelNotServedError
from edge_agent.serving import ModelServer, ServedModel
from protocols.codec import encode

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8484
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
GRACEFUL_SHUTDOWN_S = 5

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
StatusProvider = Callable[[], bytes]

Endpoint = Literal["server", "live", "ready", "status", "model", "model_ready", "infer"]


class HttpApiBindError(AgentError):
    """The inference API could not listen on its address (port taken, address not on this host)."""

    retryable = True

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot serve the inference API on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class _ClientGoneError(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


@dataclass(frozen=True, slots=True)
class _Route:
    endpoint: Endpoint
    model: str = ""
    version: str | None = None

    @property
    def method(self) -> str:
        return "POST" if self.endpoint == "infer" else "GET"


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes = b""
    allow: str | None = None


def _route(path: str) -> _Route | None:
    match path.split("/"):
        case ["", "v2"]:
            return _Route("server")
        case ["", "v2", "health", "live"]:
            return _Route("live")
        case ["", "v2", "health", "ready"]:
            return _Route("ready")
        case ["", "v2", "agent", "status"]:
            return _Route("status")
        case ["", "v2", "models", name, "versions", model_version, *rest]:
            return _model_route(name, model_version, rest)
        case ["", "v2", "models", name, *rest]:
            return _model_route(name, None, rest)
    return None


def _model_route(name: str, model_version: str | None, rest: list[str]) -> _Route | None:
    match rest:
        case []:
            return _Route("model", name, model_version)
        case ["ready"]:
            return _Route("model_ready", name, model_version)
        case ["infer"]:
            return _Route("infer", name, model_version)
    return None


def _error(status: int, message: str, allow: str | None = None) -> _Reply:
    return _Reply(status, encode(oip.ErrorBody(error=message)), allow)


class InferenceApp:
    """The ASGI application of the inference API (see the module invariants); see `create_app`."""

    def __init__(
        self,
        server: ModelServer,
        status_provider: StatusProvider | None,
        max_body_bytes: int,
        server_version: str,
    ) -> None:
        self._server = server
        self._status_provider = status_provider
        self._max_body_bytes = max_body_bytes
        self._server_metadata = encode(
            oip.ServerMetadata(name=oip.SERVER_NAME, version=server_version, extensions=())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs us with lifespan="off" and ws="none"
            return
        try:
            reply = await self._dispatch(scope, receive)
        except _ClientGoneError:
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply.body))]
        if reply.allow is not None:
            headers.append((b"allow", reply.allow.encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _dispatch(self, scope: Scope, receive: Receive) -> _Reply:
        method: str = scope["method"]
        path: str = scope["path"]
        route = _route(path)
        if route is None:
            return _error(404, f"no route {path}")
        if method != route.method:
            return _error(405, f"{method} is not allowed on {path}; use {route.method}", allow=route.method)
        try:
            return await self._answer(route, scope, receive)
        except oip.OipError as e:
            return _error(e.status_code, e.message)
        except InvalidInferenceInputError as e:
            return _error(400, e.message)
        except ModelNotServedError as e:
            return _error(404, e.message)
        except _ClientGoneError:
            raise
        except Exception as e:  # a runtime or provider failure: the client gets a 500, the log the rest
            logger.exception("%s %s failed", method, path)
            return _error(500, f"internal error ({type(e).__name__}); see the agent log")

    async def _answer(self, route: _Route, scope: Scope, receive: Receive) -> _Reply:
        match route.endpoint:
            case "live":
                return _Reply(200)
            case "ready":
                if not self._server.served():
                    raise oip.OipError(503, "not ready: no model is served yet")
                return _Reply(200)
            case "server":
                return _Reply(200, self._server_metadata)
            case "status":
                if self._status_provider is None:
                    raise oip.OipError(404, "no agent status here")
                return _Reply(200, self._status_provider())
            case "model":
                return _Reply(200, encode(oip.model_metadata(self._model(route))))
            case "model_ready":
                self._model(route)
                return _Reply(200)
            case "infer":
                return await self._infer(route, await self._read_body(scope, receive))

    def _model(self, route: _Route) -> ServedModel:
        model = self._server.get(route.model)
        if route.version is not None and route.version != model.version:
            served = f"serving {model.version}"
            raise oip.OipError(
                404, f"model {route.model!r} version {route.version!r} is not served ({served})"
            )
        return model

    async def _infer(self, route: _Route, body: bytes) -> _Reply:
        model = self._model(route)
        request, feeds = oip.decode_request(body)
        oip.check_request(model, request)
        answered, outputs = await self._server.infer(model.name, feeds)
        requested = None if request.outputs is None else [output.name for output in request.outputs]
        return _Reply(200, oip.encode_response(answered, outputs, request.id, requested))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        headers = dict(scope["headers"])
        if b"inference-header-content-length" in headers:
            raise oip.OipError(400, "binary tensor data is not supported here: send tensors as JSON data")
        too_large = oip.OipError(413, f"request body over {self._max_body_bytes} bytes")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGoneError
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def create_app(
    server: ModelServer,
    *,
    status_provider: StatusProvider | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> InferenceApp:
    """The inference API over `server`; `status_provider` answers `GET /v2/agent/status` with JSON."""
    try:
        server_version = version("edgefabric")
    except PackageNotFoundError:
        server_version = "unknown"
    return InferenceApp(server, status_provider, max_body_bytes, server_version)


@dataclass(frozen=True, slots=True)
class RunningHttpApi:
    """Where a started inference API listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its SIGINT/SIGTERM handlers: the daemon owns signals and stops the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.create_server((host, port), family=family)
        # Accepted connections inherit TCP_NODELAY on Linux. Without it every keep-alive response
        # waited ~40 ms for the client's delayed ACK (Nagle), measured by benchmarks/agent.py.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return listener
    except OSError as e:  # gaierror included
        raise HttpApiBindError(host, port, e.strerror or str(e)) from e


@contextlib.asynccontextmanager
async def serve_http(
    app: InferenceApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> AsyncIterator[RunningHttpApi]:
    """Serve `app` in the running event loop until the block exits; port 0 picks a free port.

    On exit uvicorn stops accepting, lets requests in flight finish (at most `GRACEFUL_SHUTDOWN_S`)
    and closes the socket.
    """
    sock = _bind(host, port)
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        interface="asgi3",
        lifespan="off",
        ws="none",
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():  # uvicorn stopped before it started; awaiting it below says why
                raise HttpApiBindError(host, bound_port, "the server stopped while starting")
            await asyncio.sleep(0.01)
        yield RunningHttpApi(host, bound_port)
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()
