"""Compile jobs (`POST .../compile`, `/api/v1/compile-jobs`, `edgefabric compile start|status`) as an
operator uses them.

API tests run through Litestar's TestClient over a real SQLite data dir; every job compiles a real
model (`digits_mlp`, or a small ONNX-ML model) in a real worker subprocess. The CLI and crash tests
run against a real `edgefabric up`. Compiling is CPU heavy: each job builds one or two profiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import pytest
from litestar.testing import TestClient
from onnx import TensorProto, helper

from control_plane.app import Services, create_app
from control_plane.audit.schemas import Actor
from control_plane.auth.schemas import CreateTokenRequest
from control_plane.auth.tokens import Role
from control_plane.compile_jobs.messages import WorkerRequest
from control_plane.compile_jobs.runner import STOPPED_REASON, WORKER_MODULE
from control_plane.compile_jobs.worker import EXIT_ORPHANED
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.errors import ConflictError
from control_plane.server import open_data_dir
from model_compiler.sample_models import SavedSample, digits_mlp
from protocols.manifest import MANIFEST_FILENAME, ValidationMetrics, manifest_decoder
from tests.clock import FakeClock
from tests.integration.test_control_plane_api import Api, assert_error
from tests.integration.test_control_plane_registry import upload
from tests.integration.test_control_plane_up import ControlPlane, _env, _get

JOB_TIMEOUT_S = 300.0
POLL_S = 0.05
TWO_PROFILES = ["cpu-x86_64", "intel-cpu-openvino"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("digits"))


@dataclass
class Plane:
    """An API over a real data dir, with the services behind it (to check what releases see)."""

    api: Api
    services: Services
    config: ControlPlaneConfig


def _plane(data_dir: Path, **settings: Any) -> Iterator[Plane]:
    generous = RateLimit(burst=100_000, per_s=100_000.0)
    config = ControlPlaneConfig(
        data_dir=str(data_dir),
        rate_limit_per_ip=generous,
        rate_limit_per_identity=generous,
        rate_limit_sensitive=generous,
        **settings,
    )
    db = open_data_dir(config)
    clock = FakeClock()
    services = Services.build(config, db, clock)
    tokens: dict[Role, str] = {}
    admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    if admin is not None:
        tokens[Role.ADMIN] = admin.token
        for role in (Role.OPERATOR, Role.VIEWER):
            request = CreateTokenRequest(name=role.value, role=role)
            tokens[role] = services.tokens.create(Actor(id=admin.id, name=admin.name), request).token
    try:
        with TestClient(create_app(config, services, clock=clock)) as client:
            yield Plane(Api(client, clock, tokens), services, config)
    finally:
        db.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    yield from _plane(tmp_path / "data")


def push(api: Api, sample: SavedSample, name: str = "digits") -> None:
    response = upload(
        api,
        name,
        sample.model_path.read_bytes(),
        calibration=sample.calibration_path.read_bytes(),
        validation=sample.validation_path.read_bytes(),
    )
    assert response.status_code == 201, response.text


def start(api: Api, body: dict[str, Any], name: str = "digits", version: str = "1") -> dict[str, Any]:
    response = api.call("POST", f"/api/v1/models/{name}/versions/{version}/compile", Role.OPERATOR, json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for(
    api: Api,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Poll the job until `until(job)`; every snapshot is appended to `seen`."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.call("GET", f"/api/v1/compile-jobs/{job_id}", Role.VIEWER).json()
        if seen is not None:
            seen.append(job)
        if until(job):
            return job
        time.sleep(POLL_S)
    raise AssertionError(f"compile job {job_id} not there in {JOB_TIMEOUT_S} s: {job}")


def is_finished(job: dict[str, Any]) -> bool:
    return job["state"] in ("succeeded", "failed", "interrupted")


def is_compiling(job: dict[str, Any]) -> bool:
    return job["state"] == "running" and any(p["stage"] for p in job["profiles"])


def worker_pids(parent: int) -> list[int]:
    """Live compile worker processes whose parent is `parent` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if WORKER_MODULE.encode() in cmdline and int(ppid) == parent and state != "Z":
                found.append(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def audit_actions(api: Api, job_id: str) -> list[str]:
    entries = api.call("GET", "/api/v1/audit?limit=500", Role.ADMIN).json()["items"]
    return [e["action"] for e in reversed(entries) if e["target"] == f"compile-job:{job_id}"]


def ml_operator_model(tmp_path: Path) -> tuple[bytes, bytes]:
    """An ONNX model with an ONNX-ML operator (onnxruntime runs it, OpenVINO cannot) and samples."""
    scaler = helper.make_node(
        "Scaler", ["pixels"], ["scaled"], domain="ai.onnx.ml", scale=[1.0] * 64, offset=[0.0] * 64
    )
    weights = onnx.numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [scaler, helper.make_node("MatMul", ["scaled", "w"], ["logits"])],
        "ml",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[weights],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "ml.onnx"))
    np.savez(tmp_path / "samples.npz", pixels=np.random.default_rng(0).random((64, 64), dtype=np.float32))
    return (tmp_path / "ml.onnx").read_bytes(), (tmp_path / "samples.npz").read_bytes()


# --- a job from start to finish ----------------------------------------------------------------


def test_job_runs_in_the_background_and_reports_progress_and_per_profile_metrics(
    plane: Plane, sample: SavedSample
) -> None:
    api = plane.api
    push(api, sample)
    queued = start(api, {"profiles": TWO_PROFILES})
    assert queued["state"] == "queued" and queued["started_at"] is None
    assert [(p["profile"], p["status"]) for p in queued["profiles"]] == [
        ("cpu-x86_64", "pending"),
        ("intel-cpu-openvino", "pending"),
    ]
    operator_id = api.call("GET", "/api/v1/me", Role.OPERATOR).json()["token_id"]
    assert queued["created_by"] == operator_id and (queued["model"], queued["version"]) == ("digits", "1")

    seen: list[dict[str, Any]] = []
    job = wait_for(api, queued["id"], is_finished, seen)

    stages_while_running = {
        (p["profile"], p["status"], p["stage"])
        for snapshot in seen
        if snapshot["state"] == "running"
        for p in snapshot["profiles"]
        if p["stage"]
    }
    assert ("intel-cpu-openvino", "running", "validating") in stages_while_running or any(
        profile == "intel-cpu-openvino" and status == "running" and stage.startswith("running passes")
        for profile, status, stage in stages_while_running
    ), stages_while_running
    assert any(status == "built" for _, status, _ in stages_while_running)  # cpu built, openvino still going

    assert job["state"] == "succeeded", job
    assert job["started_at"] is not None and job["finished_at"] is not None and job["reason"] is None
    out_dir = plane.services.compile_jobs.output_dir(job["id"])
    assert out_dir == plane.config.build_dir / job["id"]
    for build in job["profiles"]:
        assert build["status"] == "built" and build["reason"] is None, build
        manifest = manifest_decoder.decode((out_dir / build["profile"] / MANIFEST_FILENAME).read_bytes())
        assert build["precision"] == manifest.precision and build["recipe"] == manifest.recipe
        assert build["size_bytes"] == sum(f.size_bytes for f in manifest.files) > 0
        latency = build["host_latency"]
        assert (latency["p50_ms"], latency["p95_ms"]) == (
            manifest.host_latency.p50_ms,
            manifest.host_latency.p95_ms,
        )
        assert latency["p95_ms"] >= latency["p50_ms"] > 0
        validation = build["validation"]
        assert validation["top1_agreement"] >= 0.97 and validation["accuracy"] > 0.9
        assert msgspec.convert(validation, ValidationMetrics) == manifest.validation
    assert [p["precision"] for p in job["profiles"]] == ["int8", "int8"]

    latest = plane.services.compile_jobs.latest_succeeded("digits", "1")
    assert latest is not None and latest.id == job["id"]
    assert plane.services.compile_jobs.latest_succeeded("digits", "2") is None
    listed = api.call(
        "GET", "/api/v1/compile-jobs?model=digits&version=1&state=succeeded", Role.VIEWER
    ).json()
    assert listed["total"] == 1 and listed["items"] == [job]
    assert api.call("GET", "/api/v1/compile-jobs?state=failed", Role.VIEWER).json()["total"] == 0
    assert audit_actions(api, job["id"]) == ["compile.queued", "compile.started", "compile.succeeded"]
    assert (plane.config.build_dir / f"{job['id']}.log").is_file()


def test_a_profile_the_model_breaks_fails_with_its_reason_while_the_other_builds(
    plane: Plane, tmp_path: Path
) -> None:
    model, samples = ml_operator_model(tmp_path)
    assert upload(plane.api, "ml", model, validation=samples).status_code == 201
    queued = start(plane.api, {"profiles": ["intel-cpu-openvino", "cpu-x86_64"]}, name="ml")
    job = wait_for(plane.api, queued["id"], is_finished)
    assert job["state"] == "succeeded", job  # one profile built is enough
    openvino, cpu = job["profiles"]
    assert openvino["status"] == "failed"
    assert openvino["reason"] == "intel-cpu-openvino: unsupported operator ai.onnx.ml.Scaler"
    assert openvino["validation"] is None and openvino["size_bytes"] is None
    assert cpu["status"] == "built" and cpu["validation"]["top1_agreement"] > 0.9
    out_dir = plane.services.compile_jobs.output_dir(job["id"])
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["cpu-x86_64"]


# --- refused requests --------------------------------------------------------------------------


def test_bad_compile_requests_are_refused_and_queue_nothing(plane: Plane, sample: SavedSample) -> None:
    api = plane.api
    push(api, sample)
    path = "/api/v1/models/digits/versions/1/compile"
    body = assert_error(
        api.call("POST", path, Role.OPERATOR, json={"profiles": ["cpu-x86_64", "quantum-tpu"]}),
        422,
        "invalid_argument",
    )
    assert "'quantum-tpu'" in body["detail"] and "cpu-x86_64" in body["detail"]
    assert_error(
        api.call("POST", "/api/v1/models/digits/versions/9/compile", Role.OPERATOR, json={}), 404, "not_found"
    )
    assert_error(
        api.call("POST", "/api/v1/models/nope/versions/1/compile", Role.OPERATOR, json={}), 404, "not_found"
    )
    for bad in ({"profiles": []}, {"profile": ["cpu-x86_64"]}, {"quantization": "int4"}, [1]):
        assert_error(api.call("POST", path, Role.OPERATOR, json=bad), 400, "invalid_request")
    assert_error(api.call("POST", path, Role.VIEWER, json={}), 403, "forbidden")

    bare = upload(api, "bare", sample.model_path.read_bytes())  # no calibration or validation samples
    assert bare.status_code == 201
    body = assert_error(
        api.call("POST", "/api/v1/models/bare/versions/1/compile", Role.OPERATOR, json={}),
        422,
        "invalid_argument",
    )
    assert "samples" in body["detail"]

    assert api.call("GET", "/api/v1/compile-jobs", Role.VIEWER).json()["total"] == 0
    assert_error(api.call("GET", "/api/v1/compile-jobs?state=done", Role.VIEWER), 400, "invalid_request")
    assert_error(api.call("GET", "/api/v1/compile-jobs/0123456789abcdef", Role.VIEWER), 404, "not_found")


def test_null_profiles_means_every_packaged_profile(plane: Plane, sample: SavedSample) -> None:
    push(plane.api, sample)
    job = start(plane.api, {"profiles": None, "quantization": "dynamic"})
    names = [p["profile"] for p in job["profiles"]]
    assert set(names) >= {"cpu-x86_64", "intel-cpu-openvino", "nvidia-gpu", "tflite-arm"}
    assert job["quantization"] == "dynamic"  # the fixture's stop interrupts it before it compiles much


# --- crashes, stops and time limits ------------------------------------------------------------


def test_a_worker_that_crashes_fails_its_job_and_the_api_keeps_serving(
    plane: Plane, sample: SavedSample
) -> None:
    push(plane.api, sample)
    queued = start(plane.api, {"profiles": ["intel-cpu-openvino"]})
    wait_for(plane.api, queued["id"], is_compiling)
    (worker,) = worker_pids(os.getpid())
    os.kill(worker, signal.SIGKILL)
    job = wait_for(plane.api, queued["id"], is_finished)
    assert job["state"] == "failed"
    assert "exited with code -9 before reporting" in job["reason"] and job["id"] in job["reason"]
    assert job["profiles"][0]["status"] == "failed" and job["profiles"][0]["reason"] == job["reason"]
    assert not (plane.config.build_dir / job["id"]).exists()
    assert audit_actions(plane.api, job["id"])[-1] == "compile.failed"
    with pytest.raises(ConflictError, match="failed; only a succeeded job"):
        plane.services.compile_jobs.output_dir(job["id"])


def test_a_job_over_the_time_limit_is_stopped_and_fails(tmp_path: Path, sample: SavedSample) -> None:
    for plane in _plane(tmp_path / "data", compile_timeout_s=0.5):
        push(plane.api, sample)
        job = wait_for(plane.api, start(plane.api, {"profiles": ["cpu-x86_64"]})["id"], is_finished)
        assert job["state"] == "failed" and "longer than 0.5 s" in job["reason"]
        assert worker_pids(os.getpid()) == []


def test_stopping_the_control_plane_interrupts_the_running_job_and_a_restart_runs_the_queue(
    tmp_path: Path, sample: SavedSample
) -> None:
    data_dir = tmp_path / "data"
    for plane in _plane(data_dir):
        push(plane.api, sample)
        running = start(plane.api, {"profiles": ["intel-cpu-openvino"]})
        waiting = start(plane.api, {"profiles": ["cpu-x86_64"]})
        wait_for(plane.api, running["id"], is_compiling)
        (worker,) = worker_pids(os.getpid())
        tokens = plane.api.tokens
    assert not is_alive(worker)

    for plane in _plane(data_dir):
        plane.api.tokens = tokens
        interrupted = plane.api.call("GET", f"/api/v1/compile-jobs/{running['id']}", Role.VIEWER).json()
        assert interrupted["state"] == "interrupted" and interrupted["reason"] == STOPPED_REASON
        assert interrupted["profiles"][0]["status"] == "failed"
        assert not (plane.config.build_dir / running["id"]).exists()
        assert audit_actions(plane.api, running["id"])[-1] == "compile.interrupted"
        done = wait_for(plane.api, waiting["id"], is_finished)
        assert done["state"] == "succeeded"
        again = plane.api.call("GET", f"/api/v1/compile-jobs/{running['id']}", Role.VIEWER).json()
        assert again == interrupted  # not re-run


def test_a_worker_whose_stdin_closes_stops_without_compiling(tmp_path: Path, sample: SavedSample) -> None:
    request = WorkerRequest(
        model_path=str(sample.model_path),
        calibration_path=str(sample.calibration_path),
        validation_path=None,
        profiles=["intel-cpu-openvino"],
        out_dir=str(tmp_path / "out"),
        model="digits",
        version="1",
        quantization=None,
    )
    worker = subprocess.run(
        [sys.executable, "-m", WORKER_MODULE],
        input=msgspec.json.encode(request) + b"\n",  # then EOF: the control plane is gone
        capture_output=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )
    assert worker.returncode == EXIT_ORPHANED, worker.stderr.decode()
    assert b'"finished"' not in worker.stdout and not (tmp_path / "out" / "intel-cpu-openvino").exists()


# --- CLI against a real `edgefabric up` --------------------------------------------------------


def _cli(running: ControlPlane, token: str | None = None) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = _env(EDGEFABRIC_URL=running.api, EDGEFABRIC_TOKEN=token or running.value("admin token"))

    def edgefabric(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["edgefabric", *argv], capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False, env=env
        )

    return edgefabric


def test_compile_start_wait_and_status_from_the_cli(tmp_path: Path, sample: SavedSample) -> None:
    with ControlPlane(tmp_path / "data", "--no-advertise") as running:
        edgefabric = _cli(running)
        pushed = edgefabric(
            "models", "push", str(sample.model_path), "--name", "digits",
            "--calibration", str(sample.calibration_path), "--validation", str(sample.validation_path),
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr

        started = edgefabric(
            "compile", "start", "digits", "--version", "1", "--profile", "cpu-x86_64", "--wait"
        )
        assert started.returncode == 0, started.stderr
        assert "cpu-x86_64: built" in started.stderr  # the progress lines (not a terminal)
        assert "succeeded" in started.stdout and "PROFILE" in started.stdout

        listed = edgefabric("compile", "status", "--json")
        assert listed.returncode == 0, listed.stderr
        (job,) = json.loads(listed.stdout)
        assert job["state"] == "succeeded" and job["profiles"][0]["status"] == "built"

        one = edgefabric("compile", "status", job["id"], "--json", "--wait")
        assert one.returncode == 0 and json.loads(one.stdout) == job

        table = edgefabric("compile", "status")
        header, row = table.stdout.splitlines()
        assert header.split()[:4] == ["ID", "MODEL", "VERSION", "STATE"]
        assert row.split()[:5] == [job["id"], "digits", "1", "succeeded", "1/1"]

        profiles = edgefabric("compile", "status", job["id"])
        assert "cpu-x86_64" in profiles.stdout and "built" in profiles.stdout and "int8" in profiles.stdout

        refused = edgefabric("compile", "start", "digits", "--version", "1", "--profile", "quantum-tpu")
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "HTTP 422 invalid_argument" in refused.stderr and "quantum-tpu" in refused.stderr
        assert running.stop() == 0


def test_a_job_running_when_the_control_plane_is_killed_is_interrupted_after_restart(
    tmp_path: Path, sample: SavedSample
) -> None:
    data_dir = tmp_path / "data"
    with ControlPlane(data_dir, "--no-advertise") as running:
        edgefabric = _cli(running)
        pushed = edgefabric(
            "models", "push", str(sample.model_path), "--name", "digits",
            "--validation", str(sample.validation_path),
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        started = edgefabric(
            "compile", "start", "digits", "--version", "1", "--profile", "intel-cpu-openvino", "--json"
        )
        assert started.returncode == 0, started.stderr
        job_id = json.loads(started.stdout)["id"]
        token = running.value("admin token")
        assert running.process is not None
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not (workers := worker_pids(running.process.pid)) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        (worker,) = workers
        assert running.stop(signal.SIGKILL) == -signal.SIGKILL

    deadline = time.monotonic() + 30
    while is_alive(worker) and time.monotonic() < deadline:  # its stdin closed with the control plane
        time.sleep(POLL_S)
    assert not is_alive(worker)

    with ControlPlane(data_dir, "--no-advertise") as restarted:
        status, job = _get(f"{restarted.api}/api/v1/compile-jobs/{job_id}", token)
        assert status == 200 and job["state"] == "interrupted", job
        assert "found running at start" in job["reason"]
        shown = _cli(restarted, token)("compile", "status", job_id, "--json")
        assert json.loads(shown.stdout)["state"] == "interrupted"
        waited = _cli(restarted, token)("compile", "status", job_id, "--wait")
        assert waited.returncode == 1 and "interrupted" in waited.stdout
        assert not (data_dir / "builds" / job_id).exists()
        assert restarted.stop() == 0
