"""Enrollment end to end, as an operator and a device owner run it: `edgefabric up` (embedded broker
in operator mode), `edgefabric devices token`, `edgefabric-agent enroll` and `run` as real
subprocesses; heartbeats make the device online in the API; revocation cuts the agent off REST and
off the broker.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fleet import AgentProcess

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
WAIT_S = 30.0
PROFILE = "cpu-x86_64"


def _env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("EDGEFABRIC")}


class ControlPlane:
    """`edgefabric up` in a subprocess; entering waits for its "ready" line."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = [
            sys.executable,
            "-m",
            "control_plane.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
        ]
        self.args += args
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_path = data_dir.parent / f"{data_dir.name}-stderr.log"
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ControlPlane:
        with self._stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=stderr, text=True, env=_env(), cwd=ROOT
            )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self.lines or not self.lines[-1].startswith("ready"):
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
                assert line is not None, f"exited before ready: {self.lines} / {self.stderr}"
                self.lines.append(line)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def value(self, key: str) -> str:
        matches = [line.split(": ", 1)[1] for line in self.lines if line.startswith(f"{key}: ")]
        assert len(matches) == 1, self.lines
        return matches[0]

    @property
    def api(self) -> str:
        return self.value("api")

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def get(self, path: str, token: str) -> tuple[int, Any]:
        return self.call("GET", path, token)

    def call(self, method: str, path: str, token: str, body: object = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.api}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def edgefabric(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "control_plane.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edge_agent.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:  # None, False, 0 and empty values all mean "not yet"
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path / "cp", "--no-advertise") as running:
        yield running


def _enrollment_token(control_plane: ControlPlane, *extra: str) -> str:
    admin = control_plane.value("admin token")
    created = edgefabric("devices", "token", "--url", control_plane.api, "--token", admin, "--json", *extra)
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["token"])


def _enroll(
    control_plane: ControlPlane, tmp_path: Path, token: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return agent_cli(
        "enroll",
        "--url",
        control_plane.api,
        "--token",
        token,
        "--config",
        str(tmp_path / "agent.toml"),
        "--state-dir",
        str(tmp_path / "agent"),
        "--profile",
        PROFILE,
        *extra,
    )


def test_enrolled_agent_heartbeats_into_the_api_and_revocation_cuts_it_off(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    admin = control_plane.value("admin token")
    token = _enrollment_token(control_plane, "--label", "site=lab")
    enrolled = _enroll(control_plane, tmp_path, token, "--device-id", "e2e-1", "--label", "rack=3", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    summary = json.loads(enrolled.stdout)
    assert (summary["device_id"], summary["transport"]) == ("e2e-1", "nats")
    assert summary["broker_url"] == control_plane.value("nats") and summary["labels"] == {
        "site": "lab",
        "rack": "3",
    }

    config = tomllib.loads((tmp_path / "agent.toml").read_text())
    credentials = tmp_path / "agent" / "credentials"
    assert config["device_id"] == "e2e-1" and config["http_token"].startswith("efd_")
    assert config["artifact_base_url"] == f"{control_plane.api}/api/v1/tuf"
    assert Path(config["trusted_root"]) == credentials / "root.json"
    assert Path(config["nats_user_jwt"]).read_text().count(".") == 2
    for secret in ("device.key", "nats.jwt"):
        assert (credentials / secret).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "agent.toml").stat().st_mode & 0o777 == 0o600

    again = _enroll(control_plane, tmp_path / "second", token)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.count("\n") == 1 and "enrollment token used" in again.stderr, again.stderr

    agent = AgentProcess(tmp_path / "agent", "e2e-1", ["--config", str(tmp_path / "agent.toml")])
    agent.env = {"EDGEFABRIC_AGENT_HEARTBEAT_INTERVAL_S": "1"}
    agent.start()
    try:
        agent.wait_for(lambda s: s["is_connected"], timeout_s=WAIT_S, what="agent connected to the broker")
        device = eventually(
            lambda: (d := control_plane.get("/api/v1/devices/e2e-1", admin)[1])["online"] and d,
            "the agent's heartbeat to reach the API",
        )
        assert device["last_seen"] is not None and device["labels"] == {"site": "lab", "rack": "3"}
        listed = edgefabric("devices", "list", "--online", "--url", control_plane.api, "--token", admin)
        assert listed.returncode == 0 and "e2e-1" in listed.stdout, listed.stderr
        assert control_plane.get("/api/v1/devices/e2e-1", config["http_token"])[0] == 200
        _desired_state_reaches_the_agent_and_comes_back_reported(control_plane, "e2e-1")

        revoked = edgefabric("devices", "revoke", "e2e-1", "--url", control_plane.api, "--token", admin)
        assert revoked.returncode == 0, revoked.stderr
        status, body = control_plane.get("/api/v1/devices/e2e-1", config["http_token"])
        assert status == 401 and "revoked" in body["detail"]
        agent.wait_for(lambda s: not s["is_connected"], timeout_s=WAIT_S, what="the broker to drop the agent")
        time.sleep(3)  # it keeps reconnecting with its (revoked) JWT: the broker keeps refusing it
        assert agent.status() is not None and agent.status()["is_connected"] is False  # type: ignore[index]
    finally:
        agent.stop()


def test_mqtt_only_device_enrolls_and_heartbeats_over_mqtt(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    admin = control_plane.value("admin token")
    enrolled = _enroll(
        control_plane, tmp_path, _enrollment_token(control_plane), "--mqtt", "--device-id", "m-1"
    )
    assert enrolled.returncode == 0, enrolled.stderr
    config = tomllib.loads((tmp_path / "agent.toml").read_text())
    assert config["mqtt_url"] == control_plane.value("mqtt") and "nats_url" not in config
    assert Path(config["mqtt_user_jwt"]).read_text().count(".") == 2

    agent = AgentProcess(tmp_path / "agent", "m-1", ["--config", str(tmp_path / "agent.toml")])
    agent.env = {"EDGEFABRIC_AGENT_HEARTBEAT_INTERVAL_S": "1"}
    agent.start()
    try:
        agent.wait_for(lambda s: s["is_connected"], timeout_s=WAIT_S, what="agent connected over MQTT")
        eventually(
            lambda: control_plane.get("/api/v1/devices/m-1", admin)[1]["online"] or None,
            "the MQTT agent's heartbeat to reach the API",
        )
        _desired_state_reaches_the_agent_and_comes_back_reported(control_plane, "m-1")
    finally:
        agent.stop()


def _desired_state_reaches_the_agent_and_comes_back_reported(
    control_plane: ControlPlane, device_id: str
) -> None:
    """PUT a desired state through the API; the agent reports having seen its revision."""
    admin = control_plane.value("admin token")
    status, desired = control_plane.call("PUT", f"/api/v1/devices/{device_id}/desired", admin, {"models": []})
    assert status == 200, desired
    eventually(
        lambda: (
            control_plane.get(f"/api/v1/devices/{device_id}", admin)[1]["observed_revision"]
            == desired["revision"]
        ),
        f"{device_id} to report desired revision {desired['revision']}",
    )
    status, reported = control_plane.get(f"/api/v1/devices/{device_id}/reported", admin)
    assert status == 200 and reported["device_id"] == device_id and reported["agent_version"]


def test_enroll_finds_the_control_plane_over_mdns(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "cp") as control_plane:
        token = _enrollment_token(control_plane)
        found = agent_cli(
            "enroll",
            "--discover",
            "--mdns-interface",
            "127.0.0.1",
            "--token",
            token,
            "--config",
            str(tmp_path / "agent.toml"),
            "--state-dir",
            str(tmp_path / "agent"),
            "--profile",
            PROFILE,
        )
        assert found.returncode == 0, found.stderr
        assert f"at {control_plane.api}" in found.stdout
        device_id = tomllib.loads((tmp_path / "agent.toml").read_text())["device_id"]
        admin = control_plane.value("admin token")
        assert control_plane.get(f"/api/v1/devices/{device_id}", admin)[0] == 200


def test_enroll_failures_are_one_line(tmp_path: Path, control_plane: ControlPlane) -> None:
    bad_token = _enroll(control_plane, tmp_path, f"eft_{'0' * 16}_{'0' * 64}")
    assert bad_token.returncode == 1 and bad_token.stderr.count("\n") == 1
    assert "HTTP 401 unauthenticated: invalid enrollment token" in bad_token.stderr
    assert not (tmp_path / "agent.toml").exists()
    unreachable = agent_cli(
        "enroll",
        "--url",
        "http://127.0.0.1:9",
        "--token",
        "eft_x",
        "--profile",
        PROFILE,
        "--state-dir",
        str(tmp_path / "s"),
        "--config",
        str(tmp_path / "c.toml"),
    )
    assert unreachable.returncode == 1 and "cannot reach the control plane" in unreachable.stderr
    usage = agent_cli("enroll", "--token", "eft_x")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
