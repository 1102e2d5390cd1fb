"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

Every operation in `/schema/openapi.json` is called with generated valid and invalid inputs, as an
admin (so no route is skipped by the role guard). What must hold for every call: no 5xx, and a
response that matches what the document declares for that operation (status code, content type,
body schema, headers), and invalid input refused with a 4xx.

Not checked: that every schema-valid request is accepted (`positive_data_acceptance`). A valid body
can still be refused on purpose: a 422 for a value past a server-configured cap (`ttl_days` over
`max_token_ttl_days`), an ONNX file that does not load, a reference to a model that is not there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from control_plane.app import Services, create_app
from control_plane.broker import EmbeddedBroker
from control_plane.clock import SystemClock
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.server import open_data_dir
from protocols.transports.nats_bus import NatsBus

_ADMIN_TOKEN: dict[str, str] = {}
_STATUSES: list[int] = []
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect"}


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole app (lifespan included: broker connection, workers) served by uvicorn on loopback."""
    generous = RateLimit(burst=1_000_000, per_s=1_000_000.0)
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    config = ControlPlaneConfig(
        data_dir=str(data_dir),
        rate_limit_per_ip=generous,
        rate_limit_per_identity=generous,
        rate_limit_sensitive=generous,
    )
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(data_dir.parent / "broker"))
        db = open_data_dir(config)
        stack.callback(db.close)
        services = Services.build(config, db, SystemClock(), bus=NatsBus(broker.nats_url))
        admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
        assert admin is not None
        _ADMIN_TOKEN["value"] = admin.token
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(create_app(config, services), log_config=None, lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(setattr, server, "should_exit", True)
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    """The document, with the admin token for its `bearer` security scheme (schemathesis sends it on
    every call and leaves it out only in the cases it generates to test missing credentials)."""
    config = SchemathesisConfig.from_dict(
        {"auth": {"openapi": {"bearer": {"bearer": _ADMIN_TOKEN["value"]}}}}
    )
    return schemathesis.openapi.from_url(f"{api_url}/schema/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_operation_answers_within_its_documented_contract(case: Any) -> None:
    # Framing headers are judged by the HTTP server (uvicorn answers a bad Content-Length with its
    # own text/plain 400) before the API sees the request: not the API's contract.
    case.headers = {
        name: value for name, value in (case.headers or {}).items() if name.lower() not in _FRAMING
    }
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    _STATUSES.append(response.status_code)


def test_fuzzing_reached_the_routes_behind_authentication() -> None:
    """The token was sent: most generated calls got past authentication (not all 401s)."""
    assert _STATUSES, "the fuzzing test did not run first"
    authenticated = sum(1 for status in _STATUSES if status != 401)
    assert authenticated > 0.8 * len(_STATUSES), (authenticated, len(_STATUSES))
