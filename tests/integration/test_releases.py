"""Releases as operators and devices use them: `/api/v1/releases`, `/api/v1/tuf`, `edgefabric releases`.

Real parts only: artifacts compiled from `digits_mlp` by the real compiler (the compile jobs area is
stood in for by `CompileOutputs`, a directory per job), a real SQLite data dir and TUF repository,
the conftest's real nats-server (the app's lifespan connects to it), uvicorn on a loopback port for
the agent and CLI subprocesses, and a real MQTT-only agent that installs over the HTTP routes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.testing import TestClient

from control_plane.app import Services, create_app
from control_plane.audit.schemas import Actor
from control_plane.auth.schemas import CreateTokenRequest
from control_plane.auth.tokens import Role
from control_plane.broker import EmbeddedBroker
from control_plane.clock import Clock, SystemClock
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.errors import NotFoundError
from control_plane.releases.schemas import CompileOutput, DeviceScope
from control_plane.server import open_data_dir
from edge_agent.client import AgentClient
from model_compiler.sample_models import SavedSample, digits_mlp
from protocols import subjects
from protocols.transports.mqtt_bus import MqttBus
from protocols.transports.nats_bus import NatsBus
from tests.clock import FakeClock
from tests.fleet import AgentProcess, build_release, set_desired
from tests.integration.test_control_plane_api import Api, assert_error
from tests.integration.test_control_plane_up import _env

WAIT_S = 20.0


@dataclass
class CompileOutputs:
    """`BuiltArtifacts` over finished compile outputs: job id -> (model, version), oldest first."""

    root: Path
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def output_for(self, model: str, version: str, job_id: str | None) -> CompileOutput:
        of_version = [job for job, built in self.jobs.items() if built == (model, version)]
        if job_id is None and of_version:
            job_id = of_version[-1]
        if job_id is None or job_id not in of_version:
            raise NotFoundError("succeeded compile job", job_id or f"{model}/{version}")
        return CompileOutput(job_id=job_id, out_dir=self.root / job_id)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, sample: SavedSample) -> CompileOutputs:
    """digits versions 1 and 2 compiled for cpu-x86_64 (jobs `job-1`, `job-2`), and an empty job."""
    outputs = CompileOutputs(tmp_path_factory.mktemp("compile-jobs"))
    for version in ("1", "2"):
        build_release(sample, outputs.root / f"job-{version}", version, ("cpu-x86_64",))
        outputs.jobs[f"job-{version}"] = ("digits", version)
    (outputs.root / "job-empty").mkdir()
    outputs.jobs["job-empty"] = ("digits", "3")
    return outputs


@dataclass
class ControlPlaneUnderTest:
    config: ControlPlaneConfig
    services: Services
    clock: Clock
    tokens: dict[Role, str]

    @property
    def tuf_dir(self) -> Path:
        return self.config.tuf_dir

    def app(self) -> Litestar:
        return create_app(self.config, self.services, clock=self.clock)


@contextlib.contextmanager
def control_plane(
    tmp_path: Path,
    artifacts: CompileOutputs,
    broker: EmbeddedBroker | None,
    *,
    clock: Clock | None = None,
    **settings: Any,
) -> Iterator[ControlPlaneUnderTest]:
    """Services over a fresh data dir, connected to `broker` (None: no broker), with role tokens."""
    clock = clock or FakeClock()
    generous = RateLimit(burst=10_000, per_s=10_000.0)
    config = ControlPlaneConfig(
        data_dir=str(tmp_path / "data"),
        rate_limit_per_ip=generous,
        rate_limit_per_identity=generous,
        **settings,
    )
    db = open_data_dir(config)
    bus = None if broker is None else NatsBus(broker.nats_url, name="control-plane-under-test")
    services = Services.build(config, db, clock, bus=bus, artifacts=artifacts)
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert admin is not None
    tokens = {Role.ADMIN: admin.token}
    for role in (Role.OPERATOR, Role.VIEWER):
        request = CreateTokenRequest(name=role.value, role=role)
        tokens[role] = services.tokens.create(Actor(id=admin.id, name=admin.name), request).token
    try:
        yield ControlPlaneUnderTest(config, services, clock, tokens)
    finally:
        db.close()


@contextlib.contextmanager
def api_client(plane: ControlPlaneUnderTest) -> Iterator[Api]:
    assert isinstance(plane.clock, FakeClock)
    with TestClient(plane.app()) as client:
        yield Api(client, plane.clock, plane.tokens)


@contextlib.contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """`app` under uvicorn (lifespan on) in a thread, on a free loopback port; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn started")
        assert server.started, "uvicorn stopped during startup"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def create(api: Api, version: str, role: Role = Role.OPERATOR, **fields: Any) -> httpx.Response:
    return api.call("POST", "/api/v1/releases", role, json={"model": "digits", "version": version, **fields})


def archive_path(tuf_dir: Path, target: dict[str, Any]) -> Path:
    return next((tuf_dir / "targets").rglob(f"{target['sha256']}.*.tar"))


async def _published(nats_url: str) -> tuple[dict[str, bytes], set[str]]:
    """The Object Store's TUF metadata files (name -> bytes) and artifact object names."""
    async with contextlib.AsyncExitStack() as stack:
        bus = NatsBus(nats_url, name="test-reader")
        await bus.connect()
        stack.push_async_callback(bus.close)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="object-store-")))
        metadata: dict[str, bytes] = {}
        for name in await bus.objects.list_names(subjects.METADATA_BUCKET):
            fetched = await bus.objects.fetch_to_file(subjects.METADATA_BUCKET, name, scratch / name)
            metadata[name] = fetched.path.read_bytes()
        return metadata, set(await bus.objects.list_names(subjects.ARTIFACT_BUCKET))


def published(broker: EmbeddedBroker) -> tuple[dict[str, bytes], set[str]]:
    return asyncio.run(_published(broker.nats_url))


def timestamp(tuf_dir: Path) -> dict[str, Any]:
    signed: dict[str, Any] = json.loads((tuf_dir / "metadata" / "timestamp.json").read_bytes())["signed"]
    return signed


# --- create, list, get -------------------------------------------------------------------------


def test_release_is_signed_recorded_and_read_back(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        created = create(api, "1")
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["model"], body["version"], body["model_counter"]) == ("digits", "1", 1)
        assert body["compile_job_id"] == "job-1"
        assert body["created_by"] == api.call("GET", "/api/v1/me", Role.OPERATOR).json()["token_id"]
        manifest = json.loads((compiled.root / "job-1" / "cpu-x86_64" / "manifest.json").read_bytes())
        [target] = body["targets"]
        assert target["hw_profile"] == "cpu-x86_64" and target["target_path"] == "digits/1/cpu-x86_64.tar"
        assert target["precision"] == manifest["precision"]
        assert target["reference_histogram"] == manifest["reference_histogram"]
        assert target["host_latency"] == manifest["host_latency"]
        archive = archive_path(plane.tuf_dir, target).read_bytes()
        assert target["sha256"] == hashlib.sha256(archive).hexdigest()
        assert target["size_bytes"] == len(archive)
        signed_targets = json.loads(
            (plane.tuf_dir / "metadata" / f"{body['targets_version']}.targets.json").read_bytes()
        )["signed"]["targets"]
        assert signed_targets["digits/1/cpu-x86_64.tar"]["custom"]["model_counter"] == 1

        assert api.call("GET", "/api/v1/releases/digits/1", Role.VIEWER).json() == body
        listed = api.call("GET", "/api/v1/releases", Role.VIEWER).json()
        assert listed == {"items": [body], "total": 1, "limit": 50, "offset": 0}
        audit = api.call("GET", "/api/v1/audit", Role.ADMIN).json()["items"]
        entry = next(item for item in audit if item["action"] == "release.created")
        assert entry["target"] == "release:digits/1" and entry["detail"]["model_counter"] == 1
        assert_error(api.call("GET", "/api/v1/releases/digits/9", Role.VIEWER), 404, "not_found")


def test_drift_reference_is_the_top1_histogram_the_release_was_validated_with(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        assert create(api, "1").status_code == 201
        manifest = json.loads((compiled.root / "job-1" / "cpu-x86_64" / "manifest.json").read_bytes())
        assert manifest["reference_histogram"]["kind"] == "top1"
        reference = plane.services.releases.reference_histogram("digits", "1")
        assert reference is not None and list(reference) == manifest["reference_histogram"]["counts"]
        assert sum(reference) > 0
        assert plane.services.releases.reference_histogram("digits", "9") is None


def test_second_release_of_a_version_is_a_conflict_and_changes_nothing(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        first = create(api, "1").json()
        before = timestamp(plane.tuf_dir)["version"]
        body = assert_error(create(api, "1"), 409, "conflict")
        assert "already released" in body["detail"]
        assert_error(create(api, "1", compile_job_id="job-1"), 409, "conflict")
        assert api.call("GET", "/api/v1/releases", Role.VIEWER).json()["items"] == [first]
        assert timestamp(plane.tuf_dir)["version"] == before


def test_model_counter_grows_across_versions_and_lists_filter_by_model(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        first = create(api, "1").json()
        second = create(api, "2", compile_job_id="job-2").json()
        assert (first["model_counter"], second["model_counter"]) == (1, 2)
        assert second["targets_version"] > first["targets_version"]
        listed = api.call("GET", "/api/v1/releases?model=digits", Role.VIEWER).json()
        assert [item["version"] for item in listed["items"]] == ["2", "1"] and listed["total"] == 2
        paged = api.call("GET", "/api/v1/releases?limit=1&offset=1", Role.VIEWER).json()
        assert [item["version"] for item in paged["items"]] == ["1"] and paged["total"] == 2
        other = api.call("GET", "/api/v1/releases?model=other", Role.VIEWER).json()
        assert other == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_release_needs_a_succeeded_compile_job_with_artifacts(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        assert_error(create(api, "7"), 404, "not_found")
        assert_error(create(api, "1", compile_job_id="job-2"), 404, "not_found")
        body = assert_error(create(api, "3"), 409, "conflict")
        assert "cannot be signed" in body["detail"]
        assert api.call("GET", "/api/v1/releases", Role.VIEWER).json()["total"] == 0
        assert not list((plane.tuf_dir / "targets").rglob("*.tar"))


@pytest.mark.parametrize(
    "body",
    [
        {"model": "digits"},
        {"model": "digits", "version": "1", "extra": 1},
        {"model": "has space", "version": "1"},
        {"model": "digits", "version": "1", "compile_job_id": ""},
        {"model": "digits", "version": "../1"},
    ],
)
def test_bad_release_requests_are_400(tmp_path: Path, compiled: CompileOutputs, body: dict[str, Any]) -> None:
    with control_plane(tmp_path, compiled, None) as plane, api_client(plane) as api:
        assert_error(api.call("POST", "/api/v1/releases", Role.OPERATOR, json=body), 400, "invalid_request")


def test_viewer_cannot_create_and_without_a_broker_nothing_is_signed(
    tmp_path: Path, compiled: CompileOutputs
) -> None:
    with control_plane(tmp_path, compiled, None) as plane, api_client(plane) as api:
        assert_error(create(api, "1", role=Role.VIEWER), 403, "forbidden")
        body = assert_error(create(api, "1"), 503, "unavailable")
        assert "broker" in body["detail"]
        assert api.call("GET", "/api/v1/releases", Role.VIEWER).json()["total"] == 0
        assert not list((plane.tuf_dir / "targets").rglob("*.tar"))
        assert timestamp(plane.tuf_dir)["version"] == 1


# --- the Object Store and HTTP -----------------------------------------------------------------


def test_release_metadata_and_archive_are_published_to_the_object_store(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        body = create(api, "1").json()
    metadata, archives = published(broker)
    on_disk = {path.name: path.read_bytes() for path in (plane.tuf_dir / "metadata").glob("*.json")}
    assert metadata == on_disk
    assert f"{body['targets_version']}.targets.json" in metadata
    assert archives == {f"sha256-{body['targets'][0]['sha256']}"}


def test_metadata_is_public_and_archives_download_with_ranges(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        target = create(api, "1").json()["targets"][0]
        for name in ("1.root.json", "timestamp.json", "2.snapshot.json", "2.targets.json"):
            response = api.call("GET", f"/api/v1/tuf/metadata/{name}")
            assert response.status_code == 200, (name, response.text)
            assert response.content == (plane.tuf_dir / "metadata" / name).read_bytes()
            assert response.headers["content-type"].startswith("application/json")
        for name in ("root.json", "9.root.json", "expiries.json", "..%2Fexpiries.json", "1.root.json.tmp"):
            assert_error(api.call("GET", f"/api/v1/tuf/metadata/{name}"), 404, "not_found")

        data = archive_path(plane.tuf_dir, target).read_bytes()
        url = f"/api/v1/tuf/objects/sha256-{target['sha256']}"
        whole = api.call("GET", url, Role.VIEWER)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        part = api.call("GET", url, Role.VIEWER, headers={"Range": "bytes=100-"})
        assert part.status_code == 206 and part.content == data[100:]
        assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        middle = api.call("GET", url, Role.VIEWER, headers={"Range": "bytes=10-19"})
        assert middle.status_code == 206 and middle.content == data[10:20]
        beyond = api.call("GET", url, Role.VIEWER, headers={"Range": f"bytes={len(data)}-"})
        assert_error(beyond, 416, "range_not_satisfiable")
        assert beyond.headers["content-range"] == f"bytes */{len(data)}"

        assert_error(api.call("GET", url), 401, "unauthenticated")
        for name in (f"sha256-{'0' * 64}", "sha256-XYZ", target["sha256"], "1.root.json"):
            assert_error(api.call("GET", f"/api/v1/tuf/objects/{name}", Role.VIEWER), 404, "not_found")


def enroll_device(api: Api, profile: str) -> tuple[str, dict[str, str]]:
    """A device enrolled for `profile` through the API: its id and the headers of its `efd_` credential."""
    token = api.call("POST", "/api/v1/enrollment-tokens", Role.ADMIN, json={"profile": profile})
    assert token.status_code == 201, token.text
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    secret = token.json()["token"]
    body = {
        "token": secret,
        "public_key": base64.b64encode(raw).decode(),
        "proof": base64.b64encode(key.sign(secret.encode())).decode(),
        "profile": profile,
    }
    enrolled = api.call("POST", "/api/v1/enroll", json=body)
    assert enrolled.status_code == 201, enrolled.text
    return enrolled.json()["device_id"], {"Authorization": f"Bearer {enrolled.json()['rest_token']}"}


def assign(api: Api, device_id: str, version: str) -> None:
    """Desired state of `device_id`: digits `version` (what a rollout would write)."""
    release = api.call("GET", f"/api/v1/releases/digits/{version}", Role.VIEWER).json()
    ref = {"model": "digits", "version": version, "model_counter": release["model_counter"]}
    desired = {"models": [{"model": "digits", "release": ref}]}
    response = api.call("PUT", f"/api/v1/devices/{device_id}/desired", Role.OPERATOR, json=desired)
    assert response.status_code == 200, response.text


def test_device_credentials_fetch_only_archives_their_desired_state_assigns_to_their_chain(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, api_client(plane) as api:
        target = create(api, "1").json()["targets"][0]
        url = f"/api/v1/tuf/objects/sha256-{target['sha256']}"
        data = archive_path(plane.tuf_dir, target).read_bytes()
        for profile in ("cpu-x86_64", "nvidia-gpu"):  # cpu-x86_64 is the last of nvidia-gpu's chain
            device_id, device = enroll_device(api, profile)
            assert_error(api.call("GET", url, headers=device), 404, "not_found")  # not assigned yet
            assign(api, device_id, "1")
            part = api.call("GET", url, headers={**device, "Range": "bytes=5-"})
            assert part.status_code == 206 and part.content == data[5:], profile
        _, unassigned = enroll_device(api, "cpu-x86_64")  # same profile, another device's release
        assert_error(api.call("GET", url, headers=unassigned), 404, "not_found")
        arm_id, arm = enroll_device(api, "cpu-arm64")
        assign(api, arm_id, "1")  # assigned, but no artifact of its fallback chain
        assert_error(api.call("GET", url, headers=arm), 404, "not_found")
        for path in ("/api/v1/releases", "/api/v1/releases/digits/1"):
            assert_error(api.call("GET", path, headers=arm), 403, "forbidden")
        assert api.call("GET", "/api/v1/tuf/metadata/timestamp.json", headers=arm).status_code == 200


def test_archive_lookup_follows_fallback_chains_and_refuses_unknown_profiles(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane:
        with api_client(plane) as api:
            sha256 = create(api, "1").json()["targets"][0]["sha256"]
        releases, name = plane.services.releases, f"sha256-{sha256}"
        assigned = frozenset({("digits", "1")})
        assert releases.archive(name, None).size_bytes > 0  # an operator
        for profile in ("cpu-x86_64", "nvidia-gpu", "intel-npu"):  # cpu-x86_64 is in their chains
            assert releases.archive(name, DeviceScope(profile=profile, assigned=assigned)).size_bytes > 0
        refused = [DeviceScope(profile=p, assigned=assigned) for p in ("cpu-arm64", "no-such-profile")]
        refused.append(DeviceScope(profile="cpu-x86_64", assigned=frozenset({("digits", "2")})))
        for scope in refused:
            with pytest.raises(NotFoundError):
                releases.archive(name, scope)


# --- timestamp refresh -------------------------------------------------------------------------


def test_timestamp_is_resigned_and_republished_at_half_its_lifetime(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    clock = FakeClock()
    settings = {"timestamp_check_interval_s": 0.05}
    with control_plane(tmp_path, compiled, broker, clock=clock, **settings) as plane, api_client(plane):
        on_disk = plane.tuf_dir / "metadata" / "timestamp.json"
        wait_until(
            lambda: published(broker)[0].get("timestamp.json") == on_disk.read_bytes(), "first publication"
        )
        first = timestamp(plane.tuf_dir)
        assert first["expires"] == "2030-01-02T00:00:00Z"

        clock.advance(12 * 3600)  # exactly half the day left: not yet due
        time.sleep(0.5)  # ~10 checks
        assert timestamp(plane.tuf_dir) == first

        clock.advance(3600)
        wait_until(lambda: timestamp(plane.tuf_dir)["version"] > first["version"], "timestamp re-signed")
        refreshed = timestamp(plane.tuf_dir)
        assert refreshed["expires"] == "2030-01-02T13:00:00Z"
        assert refreshed["version"] == first["version"] + 1
        wait_until(
            lambda: published(broker)[0].get("timestamp.json") == on_disk.read_bytes(), "republication"
        )


# --- an MQTT-only agent and the CLI over a real HTTP server -------------------------------------


def test_mqtt_only_agent_installs_a_release_over_the_control_planes_http_routes(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker, sample: SavedSample
) -> None:
    plane_dir = control_plane(tmp_path, compiled, broker, clock=SystemClock())
    with plane_dir as plane, serving(plane.app()) as url:
        operator = plane.tokens[Role.OPERATOR]
        created = httpx.post(
            f"{url}/api/v1/releases",
            json={"model": "digits", "version": "1"},
            headers={"Authorization": f"Bearer {operator}"},
            timeout=60,
        )
        assert created.status_code == 201, created.text
        counter = created.json()["model_counter"]
        agent = AgentProcess(
            tmp_path / "agent",
            "mqtt-dev",
            [
                "--mqtt-url",
                broker.mqtt_url,
                "--artifact-base-url",
                f"{url}/api/v1/tuf",
                "--trusted-root",
                str(plane.tuf_dir / "metadata" / "1.root.json"),
                "--profile",
                "cpu-x86_64",
            ],
            env={"EDGEFABRIC_AGENT_HTTP_TOKEN": operator},
        )
        agent.start()
        try:
            asyncio.run(_set_desired_over_mqtt(broker.mqtt_url, counter))
            agent.wait_model("digits", lambda m: m["current_version"] == "1", what="installed over HTTP")
            pixels = np.load(sample.validation_path)["pixels"][:1]
            assert AgentClient(agent.url).infer("digits", {"pixels": pixels}).model_version == "1"
        finally:
            agent.stop()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        for route in ("/api/v1/tuf/metadata/{file}", "/api/v1/tuf/objects/{name}"):
            assert f'route="{route}",status="200"' in metrics, metrics


async def _set_desired_over_mqtt(mqtt_url: str, counter: int) -> None:
    async with MqttBus(mqtt_url, client_id="control-plane") as bus:
        await set_desired(bus, "mqtt-dev", 1, "digits", "1", counter)


def test_releases_create_list_and_get_from_the_cli(
    tmp_path: Path, compiled: CompileOutputs, broker: EmbeddedBroker
) -> None:
    with control_plane(tmp_path, compiled, broker) as plane, serving(plane.app()) as url:
        env = _env(EDGEFABRIC_URL=url, EDGEFABRIC_TOKEN=plane.tokens[Role.OPERATOR])

        def edgefabric(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["edgefabric", "releases", *argv], capture_output=True, text=True, timeout=60, env=env
            )

        created = edgefabric("create", "digits", "--version", "1")
        assert created.returncode == 0, created.stderr
        assert created.stdout.strip() == "released digits version 1 (model_counter 1, profiles cpu-x86_64)"
        as_json = edgefabric("create", "digits", "--version", "2", "--compile-job", "job-2", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["model_counter"] == 2

        again = edgefabric("create", "digits", "--version", "1")
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert "HTTP 409 conflict" in again.stderr

        listed = edgefabric("list", "--model", "digits")
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["MODEL", "VERSION", "COUNTER", "PROFILES", "CREATED"]
        assert [row.split()[:4] for row in rows] == [
            ["digits", "2", "2", "cpu-x86_64"],
            ["digits", "1", "1", "cpu-x86_64"],
        ]
        listed_json = json.loads(edgefabric("list", "--json").stdout)
        assert [item["version"] for item in listed_json] == ["2", "1"]

        shown = edgefabric("get", "digits", "1")
        assert shown.returncode == 0, shown.stderr
        assert "model_counter: 1" in shown.stdout and "compile_job_id: job-1" in shown.stdout
        assert shown.stdout.splitlines()[-1].split()[:2] == ["cpu-x86_64", "int8"]
        assert json.loads(edgefabric("get", "digits", "2", "--json").stdout)["version"] == "2"
        missing = edgefabric("get", "digits", "9")
        assert missing.returncode == 1 and "HTTP 404 not_found" in missing.stderr
