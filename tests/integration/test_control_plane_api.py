"""The control-plane REST API through Litestar's TestClient over a real SQLite data dir.

Covers what an API client notices: the authorization matrix of every route, 401/403/413/429 and
400/422 JSON bodies, audit rows, pagination, /metrics and the OpenAPI document.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient

from control_plane.app import Services, create_app
from control_plane.audit.schemas import Actor
from control_plane.auth.schemas import CreateTokenRequest
from control_plane.auth.tokens import Role
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.server import open_data_dir
from tests.clock import FakeClock

UNKNOWN_ID = "0123456789abcdef"


@dataclass
class Api:
    client: TestClient[Any]
    clock: FakeClock
    tokens: dict[Role, str]

    def as_(self, role: Role | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}

    def call(self, method: str, path: str, role: Role | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**self.as_(role), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)


def _api(tmp_path: Path, **settings: Any) -> Iterator[Api]:
    generous = RateLimit(burst=10_000, per_s=10_000.0)
    defaults: dict[str, Any] = {
        "rate_limit_per_ip": generous,
        "rate_limit_per_identity": generous,
        "rate_limit_sensitive": generous,
    }
    config = ControlPlaneConfig(data_dir=str(tmp_path / "data"), **{**defaults, **settings})
    db = open_data_dir(config)
    clock = FakeClock()
    services = Services.build(config, db, clock)
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert admin is not None
    tokens = {Role.ADMIN: admin.token}
    for role in (Role.OPERATOR, Role.VIEWER):
        request = CreateTokenRequest(name=role.value, role=role)
        tokens[role] = services.tokens.create(Actor(id=admin.id, name=admin.name), request).token
    with TestClient(create_app(config, services, clock=clock)) as client:
        yield Api(client, clock, tokens)
    db.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from _api(tmp_path)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


# --- authorization matrix ----------------------------------------------------------------------

# Every route and the least role it needs (None: public). A new route must be added here.
ACCESS: dict[tuple[str, str], Role | None] = {
    ("GET", "/api/v1/health"): None,
    ("GET", "/metrics"): None,
    ("GET", "/api/v1/me"): Role.VIEWER,
    ("GET", "/api/v1/tokens"): Role.ADMIN,
    ("POST", "/api/v1/tokens"): Role.ADMIN,
    ("GET", "/api/v1/tokens/{token_id}"): Role.ADMIN,
    ("POST", "/api/v1/tokens/{token_id}/revoke"): Role.ADMIN,
    ("GET", "/api/v1/audit"): Role.ADMIN,
    ("GET", "/api/v1/models"): Role.VIEWER,
    ("POST", "/api/v1/models"): Role.OPERATOR,
    ("GET", "/api/v1/models/{name}/versions"): Role.VIEWER,
    ("GET", "/api/v1/models/{name}/versions/{version}"): Role.VIEWER,
    ("GET", "/api/v1/models/{name}/versions/{version}/download"): Role.VIEWER,
    ("POST", "/api/v1/models/{name}/versions/{version}/compile"): Role.OPERATOR,
    ("GET", "/api/v1/compile-jobs"): Role.VIEWER,
    ("GET", "/api/v1/compile-jobs/{job_id}"): Role.VIEWER,
    ("GET", "/api/v1/releases"): Role.VIEWER,
    ("POST", "/api/v1/releases"): Role.OPERATOR,
    ("GET", "/api/v1/releases/{model}/{version}"): Role.VIEWER,
    ("GET", "/api/v1/tuf/metadata/{file}"): None,
    ("GET", "/api/v1/tuf/objects/{name}"): Role.VIEWER,
    ("GET", "/api/v1/enrollment-tokens"): Role.ADMIN,
    ("POST", "/api/v1/enrollment-tokens"): Role.ADMIN,
    ("GET", "/api/v1/enrollment-tokens/{token_id}"): Role.ADMIN,
    ("POST", "/api/v1/enrollment-tokens/{token_id}/revoke"): Role.ADMIN,
    ("POST", "/api/v1/enroll"): None,
    ("GET", "/api/v1/devices"): Role.VIEWER,
    ("GET", "/api/v1/devices/{device_id}"): Role.VIEWER,
    ("PATCH", "/api/v1/devices/{device_id}/labels"): Role.OPERATOR,
    ("GET", "/api/v1/devices/{device_id}/desired"): Role.VIEWER,
    ("PUT", "/api/v1/devices/{device_id}/desired"): Role.OPERATOR,
    ("GET", "/api/v1/devices/{device_id}/reported"): Role.VIEWER,
    ("POST", "/api/v1/devices/{device_id}/revoke"): Role.OPERATOR,
    ("GET", "/api/v1/telemetry/series"): Role.VIEWER,
    ("GET", "/api/v1/telemetry/summary"): Role.VIEWER,
    ("GET", "/api/v1/telemetry/devices"): Role.VIEWER,
    ("GET", "/api/v1/rollouts"): Role.VIEWER,
    ("POST", "/api/v1/rollouts"): Role.OPERATOR,
    ("GET", "/api/v1/rollouts/{rollout_id}"): Role.VIEWER,
    ("GET", "/api/v1/rollouts/{rollout_id}/devices"): Role.VIEWER,
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): Role.OPERATOR,
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): Role.OPERATOR,
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): Role.OPERATOR,
    ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): Role.OPERATOR,
    ("POST", "/api/v1/rollouts/{rollout_id}/promote"): Role.OPERATOR,
}
PLACEHOLDERS = {
    "{token_id}": UNKNOWN_ID,
    "{job_id}": UNKNOWN_ID,
    "{name}": "no-such-model",
    "{version}": "1",
    "{model}": "no-such-model",
    "{file}": "1.root.json",
    "{rollout_id}": UNKNOWN_ID,
    "{device_id}": "no-such-device",
}
NO_BODY_STATUS = {
    ("POST", "/api/v1/models"): 400,
    ("POST", "/api/v1/releases"): 400,
    ("POST", "/api/v1/models/{name}/versions/{version}/compile"): 400,
    ("POST", "/api/v1/rollouts"): 400,
    ("POST", "/api/v1/enrollment-tokens"): 400,
    ("POST", "/api/v1/enroll"): 400,
    ("PATCH", "/api/v1/devices/{device_id}/labels"): 400,
    ("PUT", "/api/v1/devices/{device_id}/desired"): 400,
}
"""Routes the matrix calls without the body they need: an admitted caller gets this status."""
CALLERS = [None, Role.VIEWER, Role.OPERATOR, Role.ADMIN]


def test_every_route_is_in_the_authorization_matrix(api: Api) -> None:
    document = api.call("GET", "/schema/openapi.json").json()
    routes = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert routes == set(ACCESS)


@pytest.mark.parametrize(("method", "path"), list(ACCESS))
@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c.value if c else "anonymous")
def test_route_admits_exactly_the_roles_it_declares(
    api: Api, method: str, path: str, caller: Role | None
) -> None:
    required = ACCESS[(method, path)]
    body = {"name": "matrix", "role": "viewer"} if path == "/api/v1/tokens" and method == "POST" else None
    concrete = path
    for placeholder, value in PLACEHOLDERS.items():
        concrete = concrete.replace(placeholder, value)
    response = api.call(method, concrete, caller, json=body)
    if required is None:
        assert response.status_code < 400 or response.status_code == NO_BODY_STATUS.get((method, path))
    elif caller is None:
        assert_error(response, 401, "unauthenticated")
    elif not caller.allows(required):
        assert_error(response, 403, "forbidden")
    else:
        expected = (NO_BODY_STATUS[(method, path)],) if (method, path) in NO_BODY_STATUS else (200, 201, 404)
        assert response.status_code in expected, response.text  # 404: the placeholder id


DEVICE_ROUTES = {
    ("GET", "/api/v1/devices/{device_id}"),
    ("GET", "/api/v1/devices/{device_id}/desired"),
    ("GET", "/api/v1/devices/{device_id}/reported"),
    ("GET", "/api/v1/tuf/objects/{name}"),
}
"""The routes a device credential (`efd_...`) may call; every other non-public route is a 403 for it."""


@pytest.fixture
def device(api: Api) -> tuple[str, dict[str, str]]:
    """An enrolled device: its id and the `Authorization` header of its credential."""
    token = api.call("POST", "/api/v1/enrollment-tokens", Role.ADMIN, json={}).json()["token"]
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = {
        "token": token,
        "public_key": base64.b64encode(raw).decode(),
        "proof": base64.b64encode(key.sign(token.encode())).decode(),
        "profile": "cpu-x86_64",
    }
    reply = api.call("POST", "/api/v1/enroll", json=body).json()
    return reply["device_id"], {"Authorization": f"Bearer {reply['rest_token']}"}


@pytest.mark.parametrize(("method", "path"), [route for route, role in ACCESS.items() if role is not None])
def test_a_device_credential_is_admitted_only_on_device_routes(
    api: Api, device: tuple[str, dict[str, str]], method: str, path: str
) -> None:
    concrete = path
    for placeholder, value in PLACEHOLDERS.items():
        concrete = concrete.replace(placeholder, value)
    response = api.call(method, concrete, headers=device[1])
    if (method, path) in DEVICE_ROUTES:
        assert response.status_code == 404, response.text  # another device's id, an unknown object
    else:
        assert_error(response, 403, "forbidden")


def test_a_device_credential_reads_its_own_device_until_revoked(
    api: Api, device: tuple[str, dict[str, str]]
) -> None:
    device_id, credential = device
    for suffix in ("", "/desired"):
        assert api.call("GET", f"/api/v1/devices/{device_id}{suffix}", headers=credential).status_code == 200
    assert api.call("POST", f"/api/v1/devices/{device_id}/revoke", Role.OPERATOR).status_code == 200
    for suffix in ("", "/desired", "/reported"):
        response = api.call("GET", f"/api/v1/devices/{device_id}{suffix}", headers=credential)
        assert_error(response, 401, "unauthenticated")


def test_non_public_routes_declare_bearer_security_in_openapi(api: Api) -> None:
    document = api.call("GET", "/schema/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), required in ACCESS.items():
        operation = document["paths"][path][method.lower()]
        assert (operation.get("security") == [{"bearer": []}]) == (required is not None), (method, path)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_viewer_and_operator_cannot_create_or_revoke_tokens(api: Api, role: Role) -> None:
    total = api.call("GET", "/api/v1/tokens", Role.ADMIN).json()["total"]
    audit_total = api.call("GET", "/api/v1/audit", Role.ADMIN).json()["total"]
    admin_id = api.call("GET", "/api/v1/me", Role.ADMIN).json()["token_id"]
    assert_error(
        api.call("POST", "/api/v1/tokens", role, json={"name": "x", "role": "admin"}), 403, "forbidden"
    )
    assert_error(api.call("POST", f"/api/v1/tokens/{admin_id}/revoke", role), 403, "forbidden")
    assert api.call("GET", "/api/v1/tokens", Role.ADMIN).json()["total"] == total
    assert api.call("GET", "/api/v1/audit", Role.ADMIN).json()["total"] == audit_total
    assert api.call("GET", "/api/v1/me", Role.ADMIN).status_code == 200


def test_admin_manages_tokens_end_to_end(api: Api) -> None:
    created = api.call("POST", "/api/v1/tokens", Role.ADMIN, json={"name": "ci-bot", "role": "operator"})
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith(f"efp_{body['id']}_") and body["status"] == "active"
    new_token = {"Authorization": f"Bearer {body['token']}"}
    assert api.call("GET", "/api/v1/me", headers=new_token).json()["role"] == "operator"

    shown = api.call("GET", f"/api/v1/tokens/{body['id']}", Role.ADMIN).json()
    assert "token" not in shown and "token_hash" not in shown and shown["name"] == "ci-bot"
    listed = api.call("GET", "/api/v1/tokens", Role.ADMIN).json()
    assert all("token" not in item and "token_hash" not in item for item in listed["items"])

    revoked = api.call("POST", f"/api/v1/tokens/{body['id']}/revoke", Role.ADMIN)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert_error(api.call("GET", "/api/v1/me", headers=new_token), 401, "unauthenticated")


# --- authentication failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer not-a-token", f"Bearer efp_{UNKNOWN_ID}_{'0' * 64}"],
    ids=["missing", "basic", "empty", "malformed", "unknown"],
)
def test_bad_credentials_are_401_json_with_www_authenticate(api: Api, header: str | None) -> None:
    response = api.call("GET", "/api/v1/me", headers={} if header is None else {"Authorization": header})
    assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_expired_token_is_401(api: Api) -> None:
    created = api.call(
        "POST", "/api/v1/tokens", Role.ADMIN, json={"name": "t", "role": "viewer", "ttl_days": 1}
    )
    headers = {"Authorization": f"Bearer {created.json()['token']}"}
    assert api.call("GET", "/api/v1/me", headers=headers).status_code == 200
    api.clock.advance(24 * 3600)
    body = assert_error(api.call("GET", "/api/v1/me", headers=headers), 401, "unauthenticated")
    assert "expired" in body["detail"]


def test_revoked_token_is_401_on_the_next_request(api: Api) -> None:
    viewer_id = api.call("GET", "/api/v1/me", Role.VIEWER).json()["token_id"]
    api.call("POST", f"/api/v1/tokens/{viewer_id}/revoke", Role.ADMIN)
    body = assert_error(api.call("GET", "/api/v1/me", Role.VIEWER), 401, "unauthenticated")
    assert "revoked" in body["detail"]


def test_public_routes_ignore_credentials(api: Api) -> None:
    response = api.call("GET", "/api/v1/health", headers={"Authorization": "Bearer garbage"})
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["schema_version"] >= 2


# --- bad input: 400 / 422 JSON, never 500 ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_request"),
        ({"json": {"name": "x"}}, 400, "invalid_request"),
        ({"json": {"name": "x", "role": "root"}}, 400, "invalid_request"),
        ({"json": {"name": "", "role": "viewer"}}, 400, "invalid_request"),
        ({"json": {"name": "has space", "role": "viewer"}}, 400, "invalid_request"),
        ({"json": {"name": "x" * 65, "role": "viewer"}}, 400, "invalid_request"),
        ({"json": {"name": "x", "role": "viewer", "ttl_days": 0}}, 400, "invalid_request"),
        ({"json": {"name": "x", "role": "viewer", "id": UNKNOWN_ID}}, 400, "invalid_request"),
        ({"json": {"name": "x", "role": "viewer", "token_hash": "00"}}, 400, "invalid_request"),
        ({"json": [1, 2]}, 400, "invalid_request"),
        ({"json": None}, 400, "invalid_request"),
        ({"content": b'{"name": "x", "role": "viewer", "ttl_days": 1e999}'}, 400, "invalid_request"),
        ({"json": {"name": "x", "role": "viewer", "ttl_days": 400}}, 422, "invalid_argument"),
    ],
)
def test_bad_token_requests_are_json_4xx(api: Api, kwargs: dict[str, Any], status: int, code: str) -> None:
    assert_error(api.call("POST", "/api/v1/tokens", Role.ADMIN, **kwargs), status, code)


def test_schema_violations_name_the_field(api: Api) -> None:
    body = assert_error(
        api.call("POST", "/api/v1/tokens", Role.ADMIN, json={"name": "x", "role": "root"}),
        400,
        "invalid_request",
    )
    assert body["fields"][0]["key"] == "role" and body["fields"][0]["source"] == "body"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=1e9", "limit=abc", "offset=-1"])
def test_bad_pagination_is_400(api: Api, query: str) -> None:
    body = assert_error(api.call("GET", f"/api/v1/tokens?{query}", Role.ADMIN), 400, "invalid_request")
    assert body["fields"][0]["source"] == "query"


def test_unknown_route_and_method_are_json(api: Api) -> None:
    assert_error(api.call("GET", "/api/v1/nothing-here"), 404, "not_found")
    assert_error(api.call("DELETE", "/api/v1/health"), 405, "method_not_allowed")
    assert_error(api.call("GET", f"/api/v1/tokens/{UNKNOWN_ID}", Role.ADMIN), 404, "not_found")


def test_revoking_the_last_admin_token_is_409(api: Api) -> None:
    admin_id = api.call("GET", "/api/v1/me", Role.ADMIN).json()["token_id"]
    assert_error(api.call("POST", f"/api/v1/tokens/{admin_id}/revoke", Role.ADMIN), 409, "conflict")


# --- pagination --------------------------------------------------------------------------------


def test_lists_page_with_limit_offset_and_total(api: Api) -> None:
    for i in range(4):
        api.clock.advance(1)
        api.call("POST", "/api/v1/tokens", Role.ADMIN, json={"name": f"p{i}", "role": "viewer"})
    page = api.call("GET", "/api/v1/tokens?limit=2&offset=1", Role.ADMIN).json()
    assert (page["total"], page["limit"], page["offset"]) == (7, 2, 1)  # 3 set-up tokens + 4
    assert [item["name"] for item in page["items"]] == ["p2", "p1"]
    audit = api.call("GET", "/api/v1/audit?limit=3", Role.ADMIN).json()
    assert audit["total"] == 7 and len(audit["items"]) == 3


# --- audit -------------------------------------------------------------------------------------


def test_state_changes_are_audited_with_who_what_when(api: Api) -> None:
    admin = api.call("GET", "/api/v1/me", Role.ADMIN).json()
    created = api.call(
        "POST", "/api/v1/tokens", Role.ADMIN, json={"name": "audited", "role": "viewer"}
    ).json()
    api.clock.advance(5)
    api.call("POST", f"/api/v1/tokens/{created['id']}/revoke", Role.ADMIN)
    entries = api.call("GET", "/api/v1/audit?limit=2", Role.ADMIN).json()["items"]
    revoked, made = entries
    assert (made["action"], made["target"], made["actor"], made["actor_name"]) == (
        "token.created",
        f"token:{created['id']}",
        admin["token_id"],
        admin["name"],
    )
    assert made["detail"] == {
        "name": "audited",
        "role": "viewer",
        "expires_at": created["expires_at"][:-1] + "+00:00",
    }
    assert revoked["action"] == "token.revoked" and revoked["target"] == f"token:{created['id']}"
    assert datetime.fromisoformat(revoked["at"]) - datetime.fromisoformat(made["at"]) == timedelta(seconds=5)


# --- limits: 413 and 429 -----------------------------------------------------------------------


def test_declared_oversized_body_is_413_before_authentication(tmp_path: Path) -> None:
    for api in _api(tmp_path, max_body_bytes=1024):
        response = api.call("POST", "/api/v1/tokens", content=b"x" * 2048)  # no token at all
        assert_error(response, 413, "request_too_large")


def test_streamed_oversized_body_is_413(tmp_path: Path) -> None:
    for api in _api(tmp_path, max_body_bytes=1024):

        def chunks() -> Iterator[bytes]:
            yield b'{"name": "x", "role": "viewer", "pad": "'
            for _ in range(10):
                yield b"y" * 512
            yield b'"}'

        response = api.call("POST", "/api/v1/tokens", Role.ADMIN, content=chunks())
        assert_error(response, 413, "request_too_large")


def test_requests_over_the_ip_limit_get_429_with_retry_after(tmp_path: Path) -> None:
    for api in _api(tmp_path, rate_limit_per_ip=RateLimit(burst=3, per_s=0.5)):
        for _ in range(3):
            assert api.call("GET", "/api/v1/health").status_code == 200
        response = api.call("GET", "/api/v1/health")
        assert_error(response, 429, "rate_limited")
        assert response.headers["retry-after"] == "2"
        api.clock.advance(2)
        assert api.call("GET", "/api/v1/health").status_code == 200


def test_token_guessing_is_throttled_per_ip(tmp_path: Path) -> None:
    for api in _api(tmp_path, rate_limit_per_ip=RateLimit(burst=5, per_s=0.1)):
        guess = {"Authorization": f"Bearer efp_{UNKNOWN_ID}_{'1' * 64}"}
        statuses = [api.call("GET", "/api/v1/me", headers=guess).status_code for _ in range(7)]
        assert statuses == [401] * 5 + [429] * 2


def test_identity_limit_applies_per_token(tmp_path: Path) -> None:
    for api in _api(tmp_path, rate_limit_per_identity=RateLimit(burst=3, per_s=1.0)):
        api.clock.advance(10)  # refill after the set-up calls
        assert [api.call("GET", "/api/v1/me", Role.VIEWER).status_code for _ in range(4)] == [200] * 3 + [429]
        assert api.call("GET", "/api/v1/me", Role.OPERATOR).status_code == 200


def test_token_endpoints_have_a_stricter_bucket(tmp_path: Path) -> None:
    for api in _api(tmp_path, rate_limit_sensitive=RateLimit(burst=2, per_s=0.1)):
        api.clock.advance(100)  # refill after the set-up calls
        statuses = [api.call("GET", "/api/v1/tokens", Role.ADMIN).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert api.call("GET", "/api/v1/audit", Role.ADMIN).status_code == 200
        assert int(api.call("GET", "/api/v1/tokens", Role.ADMIN).headers["retry-after"]) == 10


# --- /metrics and OpenAPI ----------------------------------------------------------------------

_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? [0-9.e+-]+$')


def test_metrics_are_prometheus_text_with_requests_by_route_and_status(api: Api) -> None:
    api.call("GET", "/api/v1/me")
    api.call("GET", "/api/v1/me", Role.VIEWER)
    api.call("GET", f"/api/v1/tokens/{UNKNOWN_ID}", Role.ADMIN)
    response = api.call("GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or _SAMPLE.match(line), line
    assert 'edgefabric_http_requests_total{method="GET",route="/api/v1/me",status="401"} 1' in lines
    assert 'edgefabric_http_requests_total{method="GET",route="/api/v1/me",status="200"} 1' in lines
    assert (
        'edgefabric_http_requests_total{method="GET",route="/api/v1/tokens/{token_id}",status="404"} 1'
        in lines
    )
    assert any(
        line.startswith('edgefabric_http_request_duration_seconds_count{method="GET",route="/api/v1/me"} ')
        for line in lines
    )


def test_openapi_document_is_public_and_describes_json_errors(api: Api) -> None:
    response = api.call("GET", "/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.") and document["info"]["title"] == "EdgeFabric control plane"
    error_body = document["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == {"error", "detail"}
    create = document["paths"]["/api/v1/tokens"]["post"]
    for status in ("400", "401", "403", "413", "422", "429"):
        schema = create["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}
