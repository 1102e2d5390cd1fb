"""The fleet REST API through Litestar's TestClient over a real SQLite data dir (and, where twins or
heartbeats are involved, a real nats-server with its MQTT listener): enrollment tokens, enrollment
and each refusal, device credentials, listing and filters, labels, desired and reported state,
revocation.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient

from control_plane.app import Endpoints, Services, create_app
from control_plane.audit.schemas import Actor
from control_plane.auth.schemas import CreateTokenRequest
from control_plane.auth.tokens import Role
from control_plane.broker import EmbeddedBroker
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.db import open_database
from control_plane.fleet.repositories import EnrollmentTokenRepository
from control_plane.server import open_data_dir
from protocols import subjects
from protocols.codec import desired_state_decoder, encode
from protocols.messages import DesiredState, Heartbeat, ModelStatus, ReportedState
from protocols.subjects import StateKey
from protocols.transports.mqtt_bus import MqttBus
from protocols.transports.nats_bus import NatsBus
from tests.clock import FakeClock

T = TypeVar("T")
PROFILE = "cpu-x86_64"
WAIT_S = 15.0


@dataclass
class Fleet:
    client: TestClient[Any]
    clock: FakeClock
    config: ControlPlaneConfig
    tokens: dict[Role, str]
    broker: EmbeddedBroker | None

    def call(self, method: str, path: str, caller: Role | str | None = None, **kwargs: Any) -> httpx.Response:
        """`caller`: a role (its operator token), a raw bearer credential, or None (anonymous)."""
        credential = self.tokens[caller] if isinstance(caller, Role) else caller
        headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
        return self.client.request(method, path, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)

    def enrollment_token(self, **fields: Any) -> str:
        response = self.call("POST", "/api/v1/enrollment-tokens", Role.ADMIN, json=fields)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def enroll(self, token: str, key: Ed25519PrivateKey | None = None, **fields: Any) -> httpx.Response:
        key = key or Ed25519PrivateKey.generate()
        body = {
            "token": token,
            "public_key": public_key(key),
            "proof": base64.b64encode(key.sign(token.encode())).decode(),
            "profile": PROFILE,
            **fields,
        }
        return self.call("POST", "/api/v1/enroll", json=body)

    def device(self, device_id: str, **fields: Any) -> str:
        """Enroll `device_id` with a fresh token; its REST credential."""
        response = self.enroll(self.enrollment_token(), device_id=device_id, **fields)
        assert response.status_code == 201, response.text
        return str(response.json()["rest_token"])

    def count(self, path: str) -> int:
        return int(self.call("GET", path, Role.ADMIN).json()["total"])


def public_key(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _fleet(tmp_path: Path, broker: EmbeddedBroker | None = None, **settings: Any) -> Iterator[Fleet]:
    generous = RateLimit(burst=10_000, per_s=10_000.0)
    defaults: dict[str, Any] = {
        "rate_limit_per_ip": generous,
        "rate_limit_per_identity": generous,
        "rate_limit_sensitive": generous,
        "device_flush_interval_s": 0.05,
    }
    config = ControlPlaneConfig(data_dir=str(tmp_path / "data"), **{**defaults, **settings})
    db = open_data_dir(config)
    clock = FakeClock()
    bus, endpoints = None, None
    if broker is not None:
        bus = NatsBus(broker.nats_url, name="control-plane-under-test")
        endpoints = Endpoints(api_url="http://cp.test", nats_url=broker.nats_url, mqtt_url=broker.mqtt_url)
    services = Services.build(config, db, clock, bus=bus, endpoints=endpoints)
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert admin is not None
    tokens = {Role.ADMIN: admin.token}
    for role in (Role.OPERATOR, Role.VIEWER):
        request = CreateTokenRequest(name=role.value, role=role)
        tokens[role] = services.tokens.create(Actor(id=admin.id, name=admin.name), request).token
    with TestClient(create_app(config, services, clock=clock)) as client:
        yield Fleet(client, clock, config, tokens, broker)
    db.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(tmp_path)


@pytest.fixture
def live_fleet(tmp_path: Path, broker: EmbeddedBroker) -> Iterator[Fleet]:
    """The app connected to a real nats-server (KV twins, heartbeats, MQTT retained twins)."""
    yield from _fleet(tmp_path, broker)


def assert_error(response: httpx.Response, status: int, code: str, detail: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and detail in body["detail"], body


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:  # None, False, 0 and empty values all mean "not yet"
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def on_bus(url: str, action: Callable[[NatsBus], Any]) -> Any:
    async def run() -> Any:
        async with NatsBus(url, name="test-device") as bus:
            return await action(bus)

    return asyncio.run(run())


# --- enrollment tokens -----------------------------------------------------------------------------


def test_enrollment_token_is_shown_once_and_expires_by_default_after_24_hours(fleet: Fleet) -> None:
    created = fleet.call(
        "POST", "/api/v1/enrollment-tokens", Role.ADMIN, json={"name": "site-a", "labels": {"site": "a"}}
    ).json()
    assert created["token"].startswith(f"eft_{created['id']}_") and created["status"] == "active"
    expires = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(created["created_at"])
    assert expires == timedelta(hours=24) and created["max_uses"] == 1
    shown = fleet.call("GET", f"/api/v1/enrollment-tokens/{created['id']}", Role.ADMIN).json()
    assert "token" not in shown and "token_hash" not in shown and shown["labels"] == {"site": "a"}
    listed = fleet.call("GET", "/api/v1/enrollment-tokens", Role.ADMIN).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]] and "token" not in listed["items"][0]
    fleet.clock.advance(24 * 3600)
    assert fleet.call("GET", f"/api/v1/enrollment-tokens/{created['id']}", Role.ADMIN).json()["status"] == (
        "expired"
    )


@pytest.mark.parametrize(
    "body",
    [{"ttl_hours": 0}, {"ttl_hours": 7 * 24 + 1}, {"max_uses": 0}, {"labels": {"bad key": "x"}}, {"id": "x"}],
)
def test_bad_enrollment_token_requests_are_400(fleet: Fleet, body: dict[str, Any]) -> None:
    assert_error(
        fleet.call("POST", "/api/v1/enrollment-tokens", Role.ADMIN, json=body), 400, "invalid_request"
    )
    assert fleet.count("/api/v1/enrollment-tokens") == 0


def test_an_enrollment_token_for_an_unknown_profile_is_422(fleet: Fleet) -> None:
    response = fleet.call("POST", "/api/v1/enrollment-tokens", Role.ADMIN, json={"profile": "quantum-tpu"})
    assert_error(response, 422, "invalid_argument", "unknown hardware profile")
    assert fleet.count("/api/v1/enrollment-tokens") == 0


# --- enrollment ------------------------------------------------------------------------------------


def test_device_enrolls_with_token_key_and_proof_and_gets_its_credentials(fleet: Fleet) -> None:
    token = fleet.enrollment_token(labels={"site": "a"})
    key = Ed25519PrivateKey.generate()
    response = fleet.enroll(token, key, device_id="edge-1", labels={"site": "b", "rack": "3"}, hostname="box")
    assert response.status_code == 201, response.text
    reply = response.json()
    assert reply["kind"] == "enrollment_reply" and reply["device_id"] == "edge-1"
    assert reply["rest_token"].startswith("efd_") and reply["profile"] == PROFILE
    assert reply["labels"] == {"site": "a", "rack": "3"}  # the token's preset wins
    assert reply["http_url"] == "http://testserver.local"
    assert reply["artifact_base_url"] == "http://testserver.local/api/v1/tuf"
    root_file = Path(fleet.config.data_dir) / "tuf" / "metadata" / "1.root.json"
    assert root_file.exists() and reply["trusted_root"] == root_file.read_text()

    device = fleet.call("GET", "/api/v1/devices/edge-1", reply["rest_token"]).json()
    assert device["id"] == "edge-1" and device["hostname"] == "box" and device["online"] is False
    assert device["last_seen"] is None and device["active_models"] == {} and device["revoked_at"] is None
    used = fleet.call("GET", "/api/v1/enrollment-tokens", Role.ADMIN).json()["items"][0]
    assert (used["status"], used["use_count"]) == ("used", 1)
    audit = fleet.call("GET", "/api/v1/audit?limit=1", Role.ADMIN).json()["items"][0]
    assert (audit["action"], audit["target"], audit["actor"]) == (
        "device.enrolled",
        "device:edge-1",
        "device:edge-1",
    )


def test_device_without_requested_id_gets_a_generated_unique_one(fleet: Fleet) -> None:
    token = fleet.enrollment_token(max_uses=2)
    first, second = (fleet.enroll(token).json()["device_id"] for _ in range(2))
    assert first != second and first.startswith("dev-") and second.startswith("dev-")


def _refusals() -> list[tuple[str, Callable[[Fleet, str], httpx.Response], int, str, str]]:
    other_key = Ed25519PrivateKey.generate()

    def tampered(fleet: Fleet, token: str) -> httpx.Response:
        return fleet.enroll(token[:-1] + ("0" if token[-1] != "0" else "1"))

    def proof_by_another_key(fleet: Fleet, token: str) -> httpx.Response:
        body = {
            "token": token,
            "public_key": public_key(Ed25519PrivateKey.generate()),
            "proof": base64.b64encode(other_key.sign(token.encode())).decode(),
            "profile": PROFILE,
        }
        return fleet.call("POST", "/api/v1/enroll", json=body)

    def proof_of_another_token(fleet: Fleet, token: str) -> httpx.Response:
        key = Ed25519PrivateKey.generate()
        body = {
            "token": token,
            "public_key": public_key(key),
            "proof": base64.b64encode(key.sign(b"eft_something_else")).decode(),
            "profile": PROFILE,
        }
        return fleet.call("POST", "/api/v1/enroll", json=body)

    def field(**override: Any) -> Callable[[Fleet, str], httpx.Response]:
        def call(fleet: Fleet, token: str) -> httpx.Response:
            key = Ed25519PrivateKey.generate()
            body = {
                "token": token,
                "public_key": public_key(key),
                "proof": base64.b64encode(key.sign(token.encode())).decode(),
                "profile": PROFILE,
                **override,
            }
            return fleet.call("POST", "/api/v1/enroll", json=body)

        return call

    return [
        ("malformed token", lambda f, t: f.enroll("eft_nope"), 401, "unauthenticated", "malformed"),
        (
            "unknown token",
            lambda f, t: f.enroll(f"eft_{'0' * 16}_{'0' * 64}"),
            401,
            "unauthenticated",
            "invalid",
        ),
        ("wrong secret", tampered, 401, "unauthenticated", "invalid enrollment token"),
        ("proof by another key", proof_by_another_key, 401, "unauthenticated", "proof of possession"),
        ("proof of another token", proof_of_another_token, 401, "unauthenticated", "proof of possession"),
        ("key not base64", field(public_key="not base64!"), 422, "invalid_argument", "public_key"),
        (
            "key too short",
            field(public_key=base64.b64encode(b"x" * 31).decode()),
            422,
            "invalid_argument",
            "",
        ),
        ("proof not base64", field(proof="%%%"), 422, "invalid_argument", "proof"),
        ("bad label", field(labels={"bad key": "v"}), 422, "invalid_argument", "labels"),
        ("bad device id", field(device_id="a.b"), 400, "invalid_request", ""),
        ("mqtt without listener", field(transport="mqtt"), 422, "invalid_argument", "MQTT"),
        (
            "unknown profile",
            field(profile="quantum-tpu"),
            422,
            "invalid_argument",
            "unknown hardware profile",
        ),
        ("profile not a string", field(profile=7), 400, "invalid_request", ""),
    ]


@pytest.mark.parametrize(
    ("attempt", "status", "code", "detail"),
    [case[1:] for case in _refusals()],
    ids=[case[0] for case in _refusals()],
)
def test_refused_enrollment_stores_nothing_and_keeps_the_token(
    fleet: Fleet, attempt: Callable[[Fleet, str], httpx.Response], status: int, code: str, detail: str
) -> None:
    token = fleet.enrollment_token()
    audit_before = fleet.count("/api/v1/audit")
    assert_error(attempt(fleet, token), status, code, detail)
    assert fleet.count("/api/v1/devices") == 0 and fleet.count("/api/v1/audit") == audit_before
    assert fleet.call("GET", "/api/v1/enrollment-tokens", Role.ADMIN).json()["items"][0]["use_count"] == 0
    assert fleet.enroll(token).status_code == 201  # the token still works


@pytest.mark.parametrize("state", ["expired", "used", "revoked"])
def test_expired_used_or_revoked_token_is_401_saying_which(fleet: Fleet, state: str) -> None:
    token = fleet.enrollment_token(ttl_hours=1)
    token_id = token.split("_")[1]
    if state == "expired":
        fleet.clock.advance(3600)
    elif state == "used":
        assert fleet.enroll(token).status_code == 201
    else:
        assert (
            fleet.call("POST", f"/api/v1/enrollment-tokens/{token_id}/revoke", Role.ADMIN).status_code == 200
        )
    devices_before = fleet.count("/api/v1/devices")
    assert_error(fleet.enroll(token), 401, "unauthenticated", f"enrollment token {state}")
    assert fleet.count("/api/v1/devices") == devices_before


def test_taken_device_id_or_enrolled_key_is_409(fleet: Fleet) -> None:
    key = Ed25519PrivateKey.generate()
    assert fleet.enroll(fleet.enrollment_token(), key, device_id="edge-1").status_code == 201
    assert_error(fleet.enroll(fleet.enrollment_token(), device_id="edge-1"), 409, "conflict", "edge-1")
    assert_error(
        fleet.enroll(fleet.enrollment_token(), key, device_id="edge-2"), 409, "conflict", "public key"
    )
    fleet.call("POST", "/api/v1/devices/edge-1/revoke", Role.OPERATOR)
    assert_error(fleet.enroll(fleet.enrollment_token(), key), 409, "conflict", "public key")  # never again
    assert fleet.count("/api/v1/devices") == 1


def test_a_token_with_max_uses_enrolls_that_many_devices(fleet: Fleet) -> None:
    token = fleet.enrollment_token(max_uses=3, profile="cpu-arm64")
    assert [fleet.enroll(token).status_code for _ in range(4)] == [201, 201, 201, 401]
    page = fleet.call("GET", "/api/v1/devices", Role.VIEWER).json()
    assert page["total"] == 3 and {d["profile"] for d in page["items"]} == {"cpu-arm64"}


def test_concurrent_enrollments_with_one_token_have_exactly_one_winner(fleet: Fleet) -> None:
    token = fleet.enrollment_token()
    start = threading.Barrier(8)

    def attempt(_: int) -> int:
        start.wait(timeout=10)
        return fleet.enroll(token).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(attempt, range(8)))
    assert statuses == [201] + [401] * 7
    assert fleet.count("/api/v1/devices") == 1


def test_the_last_use_of_a_token_goes_to_one_of_two_database_connections(fleet: Fleet) -> None:
    token_id = fleet.enrollment_token().split("_")[1]
    start = threading.Barrier(2)

    def consume(_: int) -> str:
        db = open_database(fleet.config.database_path)
        try:
            start.wait(timeout=10)
            with db.atomic():
                return "won" if EnrollmentTokenRepository(db).consume(token_id, fleet.clock.now()) else "lost"
        except sqlite3.OperationalError as e:  # WAL: a write that lost the race may be refused outright
            assert "locked" in str(e)
            return "lost"
        finally:
            db.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert sorted(pool.map(consume, range(2))) == ["lost", "won"]
    assert fleet.call("GET", "/api/v1/enrollment-tokens", Role.ADMIN).json()["items"][0]["use_count"] == 1


def test_enroll_has_the_strict_rate_limit(tmp_path: Path) -> None:
    for fleet in _fleet(tmp_path, rate_limit_sensitive=RateLimit(burst=3, per_s=0.01)):
        fleet.clock.advance(1000)
        statuses = [fleet.enroll(f"eft_{'0' * 16}_{'0' * 64}").status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]


# --- device credentials ----------------------------------------------------------------------------


def test_a_device_reads_only_its_own_device_and_state(fleet: Fleet) -> None:
    device_a = fleet.device("edge-a")
    fleet.device("edge-b")
    assert fleet.call("GET", "/api/v1/devices/edge-a", device_a).status_code == 200
    assert fleet.call("GET", "/api/v1/devices/edge-a/desired", device_a).json()["revision"] == 0
    assert_error(fleet.call("GET", "/api/v1/devices/edge-a/reported", device_a), 404, "not_found")
    for path in ("", "/desired", "/reported"):
        assert_error(fleet.call("GET", f"/api/v1/devices/edge-b{path}", device_a), 404, "not_found", "edge-b")
        assert_error(fleet.call("GET", f"/api/v1/devices/no-such{path}", device_a), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/devices", None),
        ("PATCH", "/api/v1/devices/edge-a/labels", {"labels": {"x": "y"}}),
        ("PUT", "/api/v1/devices/edge-a/desired", {"models": []}),
        ("POST", "/api/v1/devices/edge-a/revoke", None),
        ("POST", "/api/v1/enrollment-tokens", {}),
        ("GET", "/api/v1/me", None),
    ],
)
def test_a_device_credential_cannot_call_operator_routes(
    fleet: Fleet, method: str, path: str, body: dict[str, Any] | None
) -> None:
    device_a = fleet.device("edge-a")
    assert_error(fleet.call(method, path, device_a, json=body), 403, "forbidden", "device")
    assert fleet.call("GET", "/api/v1/devices/edge-a", device_a).json()["labels"] == {}


def test_a_revoked_device_credential_is_401_on_the_next_request(fleet: Fleet) -> None:
    device_a = fleet.device("edge-a")
    assert fleet.call("GET", "/api/v1/devices/edge-a", device_a).status_code == 200
    revoked = fleet.call("POST", "/api/v1/devices/edge-a/revoke", Role.OPERATOR)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_error(fleet.call("GET", "/api/v1/devices/edge-a", device_a), 401, "unauthenticated", "revoked")
    again = fleet.call("POST", "/api/v1/devices/edge-a/revoke", Role.OPERATOR).json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]  # idempotent
    assert_error(fleet.call("POST", "/api/v1/devices/edge-a/revoke", Role.VIEWER), 403, "forbidden")


@pytest.mark.parametrize(
    "credential", ["efd_nope", f"efd_{'0' * 16}_{'0' * 64}"], ids=["malformed", "unknown"]
)
def test_bad_device_credentials_are_401(fleet: Fleet, credential: str) -> None:
    fleet.device("edge-a")
    assert_error(fleet.call("GET", "/api/v1/devices/edge-a", credential), 401, "unauthenticated")


# --- listing, filters, labels ----------------------------------------------------------------------


def test_devices_filter_by_labels_profile_online_and_model(live_fleet: Fleet) -> None:
    fleet = live_fleet
    assert fleet.broker is not None
    fleet.device("a-1", labels={"site": "a", "tier": "gold"})
    fleet.device("a-2", labels={"site": "a"}, profile="cpu-arm64")
    fleet.device("b-1", labels={"site": "b", "tier": "gold"})
    heartbeats = {"a-1": {"digits": "2"}, "b-1": {"digits": "1", "mnist": "7"}}

    async def beat(bus: NatsBus) -> None:
        for device_id, models in heartbeats.items():
            beat = Heartbeat(device_id=device_id, active_models=models)
            await bus.publish(subjects.heartbeat(device_id), encode(beat))

    def ids(query: str) -> list[str]:
        return [d["id"] for d in fleet.call("GET", f"/api/v1/devices?{query}", Role.VIEWER).json()["items"]]

    on_bus(fleet.broker.nats_url, beat)
    eventually(lambda: ids("online=true") == ["a-1", "b-1"] or None, "heartbeats recorded")
    assert ids("label=site=a") == ["a-1", "a-2"]
    assert ids("label=site=a&label=tier=gold") == ["a-1"]
    assert ids("label=tier=gold&online=true") == ["a-1", "b-1"]
    assert ids("profile=cpu-arm64") == ["a-2"] and ids("online=false") == ["a-2"]
    assert ids("model=digits") == ["a-1", "b-1"] and ids("model=digits:2") == ["a-1"]
    assert ids("model=mnist:7&label=site=b") == ["b-1"] and ids("model=nothing") == []
    device = fleet.call("GET", "/api/v1/devices/b-1", Role.VIEWER).json()
    assert device["active_models"] == {"digits": "1", "mnist": "7"}
    assert device["online"] is True and device["last_seen"] == "2030-01-01T00:00:00Z"

    assert fleet_gauges(fleet) == {"enrolled": 3, "online": 2, "revoked": 0}

    fleet.clock.advance(3 * fleet.config.heartbeat_interval_s)
    assert ids("online=true") == [] and ids("online=false") == ["a-1", "a-2", "b-1"]
    assert fleet.call("POST", "/api/v1/devices/a-2/revoke", Role.OPERATOR).status_code == 200
    assert fleet_gauges(fleet) == {"enrolled": 2, "online": 0, "revoked": 1}
    page = fleet.call("GET", "/api/v1/devices?limit=2&offset=1", Role.VIEWER).json()
    assert (page["total"], [d["id"] for d in page["items"]]) == (3, ["a-2", "b-1"])


def fleet_gauges(fleet: Fleet) -> dict[str, int]:
    """The `edgefabric_devices_*` gauges of `/metrics`."""
    text = fleet.call("GET", "/metrics").text
    found = re.findall(r"^edgefabric_devices_(\w+) (\d+)$", text, flags=re.MULTILINE)
    return {name: int(value) for name, value in found}


@pytest.mark.parametrize("query", ["label=site", "label==a", "lable=site=a", "online=maybe", "limit=0"])
def test_bad_device_filters_are_4xx(fleet: Fleet, query: str) -> None:
    response = fleet.call("GET", f"/api/v1/devices?{query}", Role.VIEWER)
    assert response.status_code in (400, 422) and response.json()["error"] in (
        "invalid_request",
        "invalid_argument",
    )


def test_heartbeats_for_another_device_or_unknown_devices_are_ignored(live_fleet: Fleet) -> None:
    fleet = live_fleet
    assert fleet.broker is not None
    fleet.device("edge-a")
    fleet.device("edge-b")

    async def beat(bus: NatsBus) -> None:
        spoofed = Heartbeat(device_id="edge-a")  # sent on edge-b's subject
        await bus.publish(subjects.heartbeat("edge-b"), encode(spoofed))
        await bus.publish(subjects.heartbeat("ghost"), encode(Heartbeat(device_id="ghost")))
        await bus.publish(subjects.heartbeat("edge-b"), b"{not json")
        await bus.publish(subjects.heartbeat("edge-b"), encode(Heartbeat(device_id="edge-b")))

    on_bus(fleet.broker.nats_url, beat)
    eventually(
        lambda: fleet.call("GET", "/api/v1/devices/edge-b", Role.VIEWER).json()["online"] or None,
        "edge-b's own heartbeat",
    )
    assert fleet.call("GET", "/api/v1/devices/edge-a", Role.VIEWER).json()["last_seen"] is None
    assert fleet.count("/api/v1/devices") == 2


def test_labels_are_merge_patched_and_checked(fleet: Fleet) -> None:
    fleet.device("edge-a", labels={"site": "a", "old": "x"})
    patched = fleet.call(
        "PATCH", "/api/v1/devices/edge-a/labels", Role.OPERATOR, json={"labels": {"site": "b", "old": None}}
    )
    assert patched.status_code == 200 and patched.json()["labels"] == {"site": "b"}
    assert fleet.call("GET", "/api/v1/devices?label=site=b", Role.VIEWER).json()["total"] == 1
    for body in ({"labels": {"bad key": "x"}}, {"labels": {"k": "bad value"}}, {"site": "c"}, {}):
        assert_error(
            fleet.call("PATCH", "/api/v1/devices/edge-a/labels", Role.OPERATOR, json=body),
            400,
            "invalid_request",
        )
    too_many = {"labels": {f"k{i}": "v" for i in range(32)}}
    assert_error(
        fleet.call("PATCH", "/api/v1/devices/edge-a/labels", Role.OPERATOR, json=too_many),
        422,
        "invalid_argument",
    )
    assert_error(
        fleet.call("PATCH", "/api/v1/devices/nope/labels", Role.OPERATOR, json={"labels": {}}),
        404,
        "not_found",
    )
    assert fleet.call("GET", "/api/v1/devices/edge-a", Role.VIEWER).json()["labels"] == {"site": "b"}
    assert_error(
        fleet.call("PATCH", "/api/v1/devices/edge-a/labels", Role.VIEWER, json={"labels": {}}),
        403,
        "forbidden",
    )


# --- desired and reported state --------------------------------------------------------------------

_DESIRED = {
    "models": [{"model": "digits", "release": {"model": "digits", "version": "2", "model_counter": 2}}]
}


def test_desired_state_put_writes_the_next_revision_to_the_kv(live_fleet: Fleet) -> None:
    fleet = live_fleet
    assert fleet.broker is not None
    device_a = fleet.device("edge-a")
    first = fleet.call("PUT", "/api/v1/devices/edge-a/desired", Role.OPERATOR, json=_DESIRED)
    assert first.status_code == 200, first.text
    second = fleet.call("PUT", "/api/v1/devices/edge-a/desired", Role.OPERATOR, json={"models": []})
    assert (first.json()["revision"], second.json()["revision"]) == (1, 2)

    async def latest(bus: NatsBus) -> DesiredState:
        async with await bus.watch_state("desired", "edge-a") as watch:
            update = await asyncio.wait_for(anext(aiter(watch)), 10)
        assert update.payload is not None
        return desired_state_decoder.decode(update.payload)

    in_kv = on_bus(fleet.broker.nats_url, latest)
    assert (in_kv.device_id, in_kv.revision, in_kv.models) == ("edge-a", 2, ())
    shown = fleet.call("GET", "/api/v1/devices/edge-a/desired", device_a).json()
    assert shown["revision"] == 2 and shown["models"] == []
    assert fleet.call("GET", "/api/v1/devices/edge-a", Role.VIEWER).json()["desired_revision"] == 2
    audit = fleet.call("GET", "/api/v1/audit?limit=1", Role.ADMIN).json()["items"][0]
    assert audit["action"] == "device.desired_set" and audit["detail"]["revision"] == 2


def test_desired_state_for_an_mqtt_device_is_retained_on_its_topic(live_fleet: Fleet) -> None:
    fleet = live_fleet
    assert fleet.broker is not None
    reply = fleet.enroll(fleet.enrollment_token(), device_id="mqtt-1", transport="mqtt").json()
    assert reply["nats_url"] is None and reply["mqtt_url"] == fleet.broker.mqtt_url
    response = fleet.call("PUT", "/api/v1/devices/mqtt-1/desired", Role.OPERATOR, json=_DESIRED)
    assert response.status_code == 200, response.text

    mqtt_url = fleet.broker.mqtt_url

    async def retained() -> DesiredState:
        async with MqttBus(mqtt_url, client_id="late-mqtt-device", clean_session=True) as bus:
            watch = await bus.watch_state("desired", "mqtt-1")
            update = await asyncio.wait_for(anext(aiter(watch)), 10)
            await watch.close()
        assert update.payload is not None
        return desired_state_decoder.decode(update.payload)

    desired = asyncio.run(retained())
    assert desired.revision == 1 and desired.models[0].release.version == "2"


def test_reported_state_in_the_kv_shows_on_the_device(live_fleet: Fleet) -> None:
    fleet = live_fleet
    assert fleet.broker is not None
    device_a = fleet.device("edge-a")
    reported = ReportedState(
        device_id="edge-a",
        profile=PROFILE,
        observed_revision=4,
        agent_version="0.1.0",
        models=(ModelStatus(model="digits", state="active", current_version="3"),),
    )

    async def report(bus: NatsBus) -> None:
        await bus.put_state(StateKey("edge-a", "reported"), encode(reported))

    on_bus(fleet.broker.nats_url, report)
    device = eventually(
        lambda: (
            (d := fleet.call("GET", "/api/v1/devices/edge-a", device_a).json())["observed_revision"] and d
        ),
        "reported state recorded",
    )
    assert device["active_models"] == {"digits": "3"} and device["agent_version"] == "0.1.0"
    shown = fleet.call("GET", "/api/v1/devices/edge-a/reported", device_a).json()
    assert shown["observed_revision"] == 4 and shown["models"][0]["current_version"] == "3"
    # the next desired revision is above what the device has seen
    put = fleet.call("PUT", "/api/v1/devices/edge-a/desired", Role.OPERATOR, json={"models": []})
    assert put.json()["revision"] == 5


def test_desired_state_without_a_broker_is_503_and_for_a_revoked_device_409(fleet: Fleet) -> None:
    fleet.device("edge-a")
    put = fleet.call("PUT", "/api/v1/devices/edge-a/desired", Role.OPERATOR, json=_DESIRED)
    assert_error(put, 503, "unavailable", "broker")
    assert fleet.call("GET", "/api/v1/devices/edge-a/desired", Role.VIEWER).json()["revision"] == 0
    fleet.call("POST", "/api/v1/devices/edge-a/revoke", Role.OPERATOR)
    assert_error(
        fleet.call("PUT", "/api/v1/devices/edge-a/desired", Role.OPERATOR, json=_DESIRED), 409, "conflict"
    )
    assert_error(
        fleet.call("PUT", "/api/v1/devices/nope/desired", Role.OPERATOR, json=_DESIRED), 404, "not_found"
    )
    bad = fleet.call("PUT", "/api/v1/devices/edge-a/desired", Role.OPERATOR, json={"x": 1})
    assert_error(bad, 400, "invalid_request")
