"""Rollouts end to end: the real engine over a real nats-server and real agent subprocesses.

Releases are compiled from `digits_mlp` by the real compiler and signed by the control plane's own
signer; devices are enrolled through the fleet API; agents (`edgefabric-agent run`) install what the
engine writes into their desired state, serve it, and send real telemetry, which the gates judge.
The control plane runs in-process (Litestar's TestClient: its lifespan starts the engine) or, for
`kill -9`, as an `edgefabric up` subprocess over the same data dir.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient

from control_plane.app import Services, create_app
from control_plane.broker import EmbeddedBroker
from control_plane.clock import SystemClock
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.errors import NotFoundError
from control_plane.releases.schemas import CompileOutput
from control_plane.server import open_data_dir
from edge_agent.client import AgentClient
from model_compiler.golden import GOLDEN_FILENAME
from model_compiler.sample_models import SavedSample, digits_mlp
from protocols.manifest import MANIFEST_FILENAME, ArtifactFile, manifest_decoder
from protocols.transports.nats_bus import NatsBus
from tests.fleet import AgentProcess, build_release

PROFILE = "cpu-x86_64"
WAIT_S = 120.0
AGENT_ENV = {"EDGEFABRIC_AGENT_HEARTBEAT_INTERVAL_S": "1", "EDGEFABRIC_AGENT_SHADOW_SAMPLE_FRACTION": "1.0"}
FAST = {
    "rollout_tick_interval_s": 0.2,
    "device_flush_interval_s": 0.1,
    "heartbeat_interval_s": 1.0,
}
"""Control-plane settings that keep the tests short (the engine and the fleet monitor tick fast)."""


# --- releases ----------------------------------------------------------------------------------


@dataclass
class CompileOutputs:
    """`BuiltArtifacts` over finished compile outputs (the compile jobs area is not under test)."""

    root: Path
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def output_for(self, model: str, version: str, job_id: str | None) -> CompileOutput:
        found = [job for job, built in self.jobs.items() if built == (model, version)]
        if not found:
            raise NotFoundError("succeeded compile job", f"{model}/{version}")
        return CompileOutput(job_id=found[-1], out_dir=self.root / found[-1])


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, sample: SavedSample) -> CompileOutputs:
    """digits 1 and 2 compiled for cpu-x86_64, and 3: version 2 whose golden outputs are wrong, so
    every device refuses it in its acceptance test."""
    outputs = CompileOutputs(tmp_path_factory.mktemp("compile-jobs"))
    for version in ("1", "2"):
        build_release(sample, outputs.root / f"job-{version}", version, (PROFILE,))
        outputs.jobs[f"job-{version}"] = ("digits", version)
    failing_acceptance(outputs.root / "job-2", outputs.root / "job-3", "3")
    outputs.jobs["job-3"] = ("digits", "3")
    return outputs


def failing_acceptance(build: Path, out: Path, version: str) -> None:
    """A copy of `build` as `version`, with golden outputs its model cannot reproduce."""
    shutil.copytree(build, out)
    directory = out / PROFILE
    golden = dict(np.load(directory / GOLDEN_FILENAME, allow_pickle=False))
    golden = {name: values + 50.0 if name.startswith("out.") else values for name, values in golden.items()}
    np.savez(directory / GOLDEN_FILENAME, **golden)
    data = (directory / GOLDEN_FILENAME).read_bytes()
    manifest = manifest_decoder.decode((directory / MANIFEST_FILENAME).read_bytes())
    files = tuple(
        ArtifactFile(path=f.path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        if f.path == GOLDEN_FILENAME
        else f
        for f in manifest.files
    )
    (directory / MANIFEST_FILENAME).write_bytes(
        msgspec.json.encode(msgspec.structs.replace(manifest, version=version, files=files))
    )


# --- control plane, devices, agents --------------------------------------------------------------


@dataclass
class Plane:
    """REST calls to a control plane (in-process client or a subprocess's URL) as admin."""

    call: Callable[..., httpx.Response]

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def release(self, version: str) -> None:
        self.ok("POST", "/api/v1/releases", json={"model": "digits", "version": version})

    def enroll(self, device_id: str) -> None:
        token = self.ok("POST", "/api/v1/enrollment-tokens", json={})["token"]
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        body = {
            "token": token,
            "public_key": base64.b64encode(raw).decode(),
            "proof": base64.b64encode(key.sign(token.encode())).decode(),
            "profile": PROFILE,
            "device_id": device_id,
        }
        self.ok("POST", "/api/v1/enroll", json=body)

    def roll_out(self, version: str, **spec: Any) -> str:
        body = {"model": "digits", "version": version, **spec}
        return str(self.ok("POST", "/api/v1/rollouts", json=body)["id"])

    def status(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/api/v1/rollouts/{rollout_id}"))

    def wait_state(
        self, rollout_id: str, states: set[str], agents: list[AgentProcess], timeout_s: float = WAIT_S
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status = self.status(rollout_id)
        while status["state"] not in states:
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {a.device_id}\n{a.log()[-2000:]}" for a in agents)
                devices = self.ok("GET", f"/api/v1/rollouts/{rollout_id}/devices")
                raise AssertionError(
                    f"rollout not {states}:\n{json.dumps(status, indent=1)}\n{devices}\n{logs}"
                )
            time.sleep(0.2)
            status = self.status(rollout_id)
        return status


def settings(tmp_path: Path, **overrides: Any) -> ControlPlaneConfig:
    generous = RateLimit(burst=100_000, per_s=100_000.0)
    return ControlPlaneConfig(
        data_dir=str(tmp_path / "data"),
        rate_limit_per_ip=generous,
        rate_limit_per_identity=generous,
        rate_limit_sensitive=generous,
        **{**FAST, **overrides},
    )


@contextlib.contextmanager
def in_process(
    config: ControlPlaneConfig, broker: EmbeddedBroker, compiled: CompileOutputs
) -> Iterator[Plane]:
    """The control plane in this process; its lifespan connects the broker and starts the engine."""
    db = open_data_dir(config)
    services = Services.build(
        config, db, SystemClock(), bus=NatsBus(broker.nats_url, name="control-plane"), artifacts=compiled
    )
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    try:
        with TestClient(create_app(config, services)) as client:
            headers = {"Authorization": f"Bearer {admin.token if admin else ''}"}
            yield Plane(lambda method, path, **kw: client.request(method, path, headers=headers, **kw))
    finally:
        db.close()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def start_agent(
    tmp_path: Path,
    broker: EmbeddedBroker,
    config: ControlPlaneConfig,
    device_id: str,
    agents: list[AgentProcess],
) -> AgentProcess:
    trusted_root = config.tuf_dir / "metadata" / "1.root.json"
    args = ["--nats-url", broker.nats_url, "--trusted-root", str(trusted_root), "--profile", PROFILE]
    agent = AgentProcess(
        tmp_path / "agents" / device_id, device_id, [*args, "--telemetry-interval", "1"], env=AGENT_ENV
    )
    agents.append(agent)
    agent.start()
    return agent


def serving(agent: AgentProcess) -> str | None:
    model = agent.model("digits")
    return None if model is None else model["current_version"]


@contextlib.contextmanager
def traffic(agents: list[AgentProcess], sample: SavedSample) -> Iterator[None]:
    """Inference requests to every agent that serves digits, until the block ends (real telemetry)."""
    samples = np.load(sample.validation_path)
    name = next(key for key in samples.files if key != "labels")
    images = samples[name][:8]
    stop = threading.Event()

    def ask() -> None:
        clients = [AgentClient(agent.url) for agent in agents]
        index = 0
        while not stop.is_set():
            for client in clients:
                with contextlib.suppress(Exception):  # an agent without the model yet answers 404
                    client.infer("digits", {name: images[index % 8 : index % 8 + 1]})
            index += 1
            stop.wait(0.05)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def gate(status: dict[str, Any], wave: int, name: str) -> dict[str, Any]:
    passed = next(
        d
        for d in status["decisions"]
        if d["wave"] == wave and d["kind"] == "gates" and d["outcome"] == "passed"
    )
    return dict(next(g for g in passed["gates"] if g["gate"] == name))


def kinds(status: dict[str, Any]) -> list[tuple[int | None, str, str]]:
    return [(d["wave"], d["kind"], d["outcome"]) for d in status["decisions"]]


# --- tests ---------------------------------------------------------------------------------------


def test_good_release_reaches_every_agent_through_the_waves_and_rollback_restores_the_previous(
    tmp_path: Path,
    broker: EmbeddedBroker,
    compiled: CompileOutputs,
    sample: SavedSample,
    agents: list[AgentProcess],
) -> None:
    config = settings(tmp_path)
    with in_process(config, broker, compiled) as plane:
        plane.release("1")
        plane.release("2")
        for device_id in ("dev-a", "dev-b"):
            plane.enroll(device_id)
            start_agent(tmp_path, broker, config, device_id, agents)
        gates = {"soak_s": 2, "min_requests": 5, "max_error_rate": 0.05, "max_latency_regression_pct": 1000.0}
        with traffic(agents, sample):
            first = plane.roll_out("1", gates=gates)
            done = plane.wait_state(first, {"completed", "halted", "rolled_back"}, agents)
            assert done["state"] == "completed", done
            assert [serving(agent) for agent in agents] == ["1", "1"]
            assert [w["device_count"] for w in done["waves"]] == [1, 1]
            assert kinds(done) == [
                (None, "planned", "info"),
                (0, "wave_started", "info"),
                (0, "installed", "passed"),
                (0, "gates", "waiting"),
                (0, "gates", "passed"),
                (1, "wave_started", "info"),
                (1, "installed", "passed"),
                (1, "gates", "waiting"),
                (1, "gates", "passed"),
            ]
            error_rate = gate(done, 0, "error_rate")
            assert error_rate["status"] == "passed" and 0.0 <= error_rate["value"] <= 0.05
            budget = gate(done, 0, "p95_latency_budget")
            assert budget["status"] == "passed" and 0 < budget["value"] <= budget["threshold"] == 250.0

            second = plane.roll_out("2", gates=gates)
            done = plane.wait_state(second, {"completed", "halted", "rolled_back"}, agents)
            assert done["state"] == "completed" and done["baseline_version"] == "1", done
            assert [serving(agent) for agent in agents] == ["2", "2"]
            regression = gate(done, 0, "latency_regression_pct")  # dev-b still served 1 during wave 0
            assert regression["status"] == "passed" and regression["value"] is not None

        # both agents run 2 (anti-rollback floor): the engine writes 1 back and sends the command
        plane.ok("POST", f"/api/v1/rollouts/{second}/rollback")
        back = plane.wait_state(second, {"rolled_back"}, agents)
        assert [serving(agent) for agent in agents] == ["1", "1"]
        devices = plane.ok("GET", f"/api/v1/rollouts/{second}/devices")["items"]
        assert {(d["state"], d["previous_version"]) for d in devices} == {("reverted", "1")}
        assert back["decisions"][-1]["summary"].startswith("rolled back: 2 device(s) reverted")
        assert any(d["kind"] == "rollback" and d["actor"] != "engine" for d in back["decisions"])


def test_release_failing_acceptance_halts_at_the_canary_and_rolls_it_back(
    tmp_path: Path, broker: EmbeddedBroker, compiled: CompileOutputs, agents: list[AgentProcess]
) -> None:
    config = settings(tmp_path)
    quick = {"soak_s": 0, "min_requests": 0}
    with in_process(config, broker, compiled) as plane:
        plane.release("1")
        plane.release("3")
        for device_id in ("dev-a", "dev-b"):
            plane.enroll(device_id)
            start_agent(tmp_path, broker, config, device_id, agents)
        first = plane.roll_out("1", gates=quick)
        assert plane.wait_state(first, {"completed", "rolled_back"}, agents)["state"] == "completed"

        bad = plane.roll_out("3", gates=quick)
        done = plane.wait_state(bad, {"completed", "rolled_back"}, agents)
        assert done["state"] == "rolled_back", done
        assert done["reason"].startswith("wave 0 failed its gates: install_success_ratio")
        assert [w["state"] for w in done["waves"]] == ["failed", "pending"]
        failed = next(d for d in done["decisions"] if d["kind"] == "gates" and d["outcome"] == "failed")
        [install] = failed["gates"]
        assert (install["gate"], install["value"], install["threshold"]) == (
            "install_success_ratio",
            0.0,
            1.0,
        )
        devices = {d["device_id"]: d for d in plane.ok("GET", f"/api/v1/rollouts/{bad}/devices")["items"]}
        canary = next(d for d in devices.values() if d["wave"] == 0)
        other = next(d for d in devices.values() if d["wave"] == 1)
        assert (canary["state"], canary["previous_version"]) == ("reverted", "1")
        assert other["state"] == "pending" and other["revision"] is None  # never assigned
        assert [serving(agent) for agent in agents] == ["1", "1"]
        canary_agent = next(a for a in agents if a.device_id == canary["device_id"])
        assert canary_agent.model("digits")["state"] == "active"  # type: ignore[index]
        desired = plane.ok("GET", f"/api/v1/devices/{canary['device_id']}/desired")
        assert [(m["release"]["version"], m["rollout_id"]) for m in desired["models"]] == [("1", first)]


def test_agent_offline_during_the_rollout_is_skipped_and_converges_when_it_returns(
    tmp_path: Path, broker: EmbeddedBroker, compiled: CompileOutputs, agents: list[AgentProcess]
) -> None:
    config = settings(tmp_path)
    with in_process(config, broker, compiled) as plane:
        plane.release("1")
        for device_id in ("dev-a", "dev-b"):
            plane.enroll(device_id)
            start_agent(tmp_path, broker, config, device_id, agents)
        away = agents[0]
        wait_online(plane, {"dev-a": True, "dev-b": True})
        away.stop()
        wait_online(plane, {"dev-a": False})
        rollout = plane.roll_out(
            "1", gates={"soak_s": 0, "min_requests": 0}, device_deadline_s=3, on_deadline="skipped"
        )
        done = plane.wait_state(rollout, {"completed", "rolled_back"}, agents)
        assert done["state"] == "completed", done
        devices = {d["device_id"]: d for d in plane.ok("GET", f"/api/v1/rollouts/{rollout}/devices")["items"]}
        assert devices["dev-b"]["wave"] == 0  # the online device is the canary
        assert devices["dev-a"]["state"] == "skipped" and "no answer within 3 s" in devices["dev-a"]["reason"]
        assert serving(agents[1]) == "1"

        away.start()  # the desired state waited for it in the KV bucket
        away.wait_model("digits", lambda m: m["current_version"] == "1", what="converged after returning")


def test_shadow_rollout_reports_agreement_and_is_promoted_in_one_call(
    tmp_path: Path,
    broker: EmbeddedBroker,
    compiled: CompileOutputs,
    sample: SavedSample,
    agents: list[AgentProcess],
) -> None:
    config = settings(tmp_path)
    with in_process(config, broker, compiled) as plane:
        plane.release("1")
        plane.release("2")
        plane.enroll("dev-a")
        agent = start_agent(tmp_path, broker, config, "dev-a", agents)
        first = plane.roll_out("1", gates={"soak_s": 0, "min_requests": 0})
        assert plane.wait_state(first, {"completed", "rolled_back"}, agents)["state"] == "completed"
        with traffic(agents, sample):
            shadow = plane.roll_out(
                "2", mode="shadow", gates={"soak_s": 1, "min_requests": 5, "min_shadow_agreement": 0.9}
            )
            done = plane.wait_state(shadow, {"completed", "rolled_back"}, agents)
            assert done["state"] == "completed", done
            agreement = gate(done, 0, "shadow_agreement")
            assert agreement["status"] == "passed" and agreement["value"] >= 0.9
            model = agent.model("digits")
            assert model is not None and (model["current_version"], model["shadow_version"]) == ("1", "2")

            promoted = plane.ok("POST", f"/api/v1/rollouts/{shadow}/promote")
            assert (promoted["state"], promoted["mode"]) == ("running", "active")
            done = plane.wait_state(shadow, {"completed", "rolled_back"}, agents)
            assert done["state"] == "completed" and done["promoted_at"] is not None, done
        assert serving(agent) == "2"
        assert plane.call("POST", f"/api/v1/rollouts/{shadow}/promote").status_code == 409


def test_operator_controls_follow_the_state_table_and_bad_requests_are_refused_with_the_reason(
    tmp_path: Path, broker: EmbeddedBroker, compiled: CompileOutputs
) -> None:
    config = settings(tmp_path)
    with in_process(config, broker, compiled) as plane:
        plane.release("1")
        plane.release("2")

        def refused(status: int, body: dict[str, Any], detail: str) -> None:
            response = plane.call("POST", "/api/v1/rollouts", json={"model": "digits", **body})
            assert response.status_code == status, response.text
            assert detail in response.json()["detail"]

        refused(422, {"version": "1"}, "no device to roll out to: 0 enrolled device(s) match")
        for device_id in ("dev-a", "dev-b"):  # enrolled, but no agent runs: nobody answers
            plane.enroll(device_id)
        refused(422, {"version": "9"}, "digits version 9 is not released")
        refused(422, {"version": "1", "waves": [{"count": 1}]}, "the last wave must be")
        refused(422, {"version": "1", "selector": {"profiles": ["nvidia-gpu"]}}, "no device to roll out to")
        refused(400, {"version": "1", "gates": {"max_latency_ms": 3}}, "Validation failed")
        refused(400, {"version": "1", "gates": {"max_error_rate": 2}}, "Validation failed")

        first = plane.roll_out("1", gates={"soak_s": 0, "min_requests": 0})
        refused(409, {"version": "2"}, f"rollout {first} of digits is running")
        assigned = wait_for(
            lambda: plane.ok("GET", "/api/v1/devices/dev-a/desired")["models"] != [], "canary assigned"
        )
        assert assigned and plane.status(first)["waves"][0]["state"] == "installing"
        [model] = plane.ok("GET", "/api/v1/devices/dev-a/desired")["models"]
        assert (model["release"]["version"], model["mode"], model["rollout_id"]) == ("1", "active", first)
        assert plane.ok("GET", "/api/v1/devices/dev-b/desired")["models"] == []  # wave 1 not started

        def control(action: str, rollout_id: str = first) -> httpx.Response:
            return plane.call("POST", f"/api/v1/rollouts/{rollout_id}/{action}")

        assert control("pause").json()["state"] == "paused"
        assert control("pause").json() == {
            "error": "conflict",
            "detail": "cannot pause a rollout that is paused",
        }
        assert control("promote").status_code == 409  # not a shadow rollout
        assert control("resume").json()["state"] == "running"
        assert control("abort").json()["state"] == "aborted"
        assert control("resume").status_code == 409
        assert plane.call("POST", "/api/v1/rollouts/0123456789abcdef/abort").status_code == 404

        second = plane.roll_out("2", gates={"soak_s": 0, "min_requests": 0})  # the aborted one is not live
        assert control("rollback").json()["detail"] == (
            f"rollout {second} of digits came after this one and owns the assignment now"
        )
        listed = plane.ok("GET", "/api/v1/rollouts", params={"model": "digits"})
        assert [r["id"] for r in listed["items"]] == [second, first] and listed["total"] == 2
        decisions = [(d["kind"], d["actor"] != "engine") for d in plane.status(first)["decisions"]]
        assert [kind for kind, by_operator in decisions if by_operator] == [
            "planned",
            "pause",
            "resume",
            "abort",
        ]
        audit = plane.ok("GET", "/api/v1/audit", params={"limit": 500})["items"]
        assert {"rollout.created", "rollout.paused", "rollout.resumed", "rollout.aborted"} <= {
            entry["action"] for entry in audit
        }


def wait_online(plane: Plane, expected: dict[str, bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        online = {d: plane.ok("GET", f"/api/v1/devices/{d}")["online"] for d in expected}
        if online == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"devices never reached {expected}")


# --- kill -9 of the control plane ------------------------------------------------------------------


@dataclass
class ControlPlaneProcess:
    """`edgefabric up` as a subprocess over a prepared data dir, with an external broker."""

    data_dir: Path
    nats_url: str
    config_file: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control_plane.cli",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--port",
                "0",
                "--nats-url",
                self.nats_url,
                "--no-advertise",
                "--config",
                str(self.config_file),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=Path(__file__).resolve().parents[2],
            env={k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC_")},
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode()
            if line.startswith("api: "):
                self.url = line.split(" ", 1)[1].strip()
            if line.startswith("ready") or not line:
                break
        assert self.url and self.process.poll() is None, self.log_path.read_text()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def test_control_plane_killed_mid_rollout_carries_on_after_restart(
    tmp_path: Path, broker: EmbeddedBroker, compiled: CompileOutputs, agents: list[AgentProcess]
) -> None:
    config = settings(tmp_path)
    with in_process(config, broker, compiled) as plane:  # prepare: a release and two devices
        plane.release("1")
        for device_id in ("dev-a", "dev-b"):
            plane.enroll(device_id)
        token = plane.ok("POST", "/api/v1/tokens", json={"name": "ops", "role": "operator"})["token"]
    for device_id in ("dev-a", "dev-b"):
        start_agent(tmp_path, broker, config, device_id, agents)
    config_file = tmp_path / "control-plane.toml"
    config_file.write_text("\n".join(f"{key} = {value}" for key, value in FAST.items()) + "\n")
    process = ControlPlaneProcess(
        config.data_path, broker.nats_url, config_file, tmp_path / "control-plane.log"
    )

    def remote() -> Plane:
        return Plane(
            lambda method, path, **kw: httpx.request(
                method, process.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw
            )
        )

    try:
        process.start()
        created = cli(
            process.url,
            token,
            "create",
            "digits",
            "--version",
            "1",
            "--wave",
            "1",
            "--wave",
            "100%",
            "--soak",
            "5",
            "--min-requests",
            "0",
            "--json",
        )
        rollout = json.loads(created.stdout)["id"]
        soaking = wait_for(
            lambda: remote().status(rollout)["waves"][0]["state"] == "soaking", "wave 0 soaking"
        )
        assert soaking
        canary = next(
            d for d in remote().ok("GET", f"/api/v1/rollouts/{rollout}/devices")["items"] if d["wave"] == 0
        )
        before = remote().status(rollout)
        process.kill()

        process.start()
        done = remote().wait_state(rollout, {"completed", "rolled_back"}, agents)
        assert done["state"] == "completed", done
        assert [serving(agent) for agent in agents] == ["1", "1"]
        assert done["decisions"][: len(before["decisions"])] == before["decisions"]  # carried on, not redone
        assert [d["kind"] for d in done["decisions"]].count("wave_started") == 2
        assert done["waves"][0]["soak_started_at"] == before["waves"][0]["soak_started_at"]
        device = remote().ok("GET", f"/api/v1/devices/{canary['device_id']}")
        assert device["desired_revision"] == canary["revision"]  # the canary was not written again

        shown = cli(process.url, token, "status", rollout, "--wait").stdout
        assert "state: completed" in shown and "GATE" in shown and "install_success_ratio" in shown
        assert "wave 0 passed; wave 1 next" in shown
        assert rollout in cli(process.url, token, "list").stdout
        refused = cli(process.url, token, "pause", rollout, check=False)
        assert refused.returncode == 1 and "cannot pause a rollout that is completed" in refused.stderr
    finally:
        process.stop()


def cli(url: str, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`edgefabric rollouts ARGS` against the control plane at `url`."""
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "rollouts", *args, "--url", url, "--token", token],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert not check or done.returncode == 0, done.stderr
    return done


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return True
