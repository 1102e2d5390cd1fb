"""Test harness for agents: build signed releases, publish them, drive desired state, run agents.

Everything here uses the project's own compiler, signing, protocols and transports against a
real broker; the agent runs as a real subprocess (`edgefabric-agent run`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_compiler.compiler import CompileRequest, compile_model
from model_compiler.sample_models import SavedSample
from model_compiler.signing.publish import publish_repository
from model_compiler.signing.repository import sign_release
from protocols.codec import encode
from protocols.messages import DesiredState, ModelAssignment, ReleaseRef
from protocols.subjects import StateKey
from protocols.transports.bus import Bus
from protocols.transports.nats_bus import NatsBus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_release(sample: SavedSample, out: Path, version: str, profiles: tuple[str, ...]) -> Path:
    report = compile_model(
        CompileRequest(
            model_path=sample.model_path,
            profiles=profiles,
            out_dir=out,
            model_name="digits",
            version=version,
            calibration_path=sample.calibration_path,
            validation_path=sample.validation_path,
        )
    )
    assert report.is_success, [r.reason for r in report.results]
    return out


async def sign_and_publish(bus: NatsBus, repo: Path, build_dir: Path, model: str, version: str) -> int:
    release = sign_release(repo, build_dir, model, version)
    await publish_repository(bus.objects, repo)
    return release.targets[0].model_counter


async def set_desired(
    bus: Bus, device_id: str, revision: int, model: str, version: str, counter: int, mode: str = "active"
) -> None:
    assignment = ModelAssignment(
        model=model,
        mode=mode,  # type: ignore[arg-type]
        release=ReleaseRef(model=model, version=version, model_counter=counter),
    )
    desired = DesiredState(device_id=device_id, revision=revision, models=(assignment,))
    await bus.put_state(StateKey(device_id, "desired"), encode(desired))


@dataclass
class AgentProcess:
    """One `edgefabric-agent run` subprocess with its own state dir and HTTP port."""

    state_dir: Path
    device_id: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.state_dir.parent / f"{self.device_id}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC_AGENT_")} | self.env
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "--state-dir",
                str(self.state_dir),
                "--device-id",
                self.device_id,
                "--http-port",
                str(self.port),
                *self.args,
            ],
            stdout=log,
            stderr=log,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.wait_for(lambda s: True, timeout_s=30, what="HTTP API up")

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/agent/status", timeout=2) as response:
                return dict(json.loads(response.read()))
        except OSError:
            return None

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float = 60, what: str = "condition"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status {status}\n{self.log()[-3000:]}")

    def model(self, name: str) -> dict[str, Any] | None:
        status = self.status() or {}
        return next((m for m in status.get("models", []) if m["model"] == name), None)

    def wait_model(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_s: float = 90,
        what: str = "model state",
    ) -> dict[str, Any]:
        status = self.wait_for(
            lambda s: any(m["model"] == name and predicate(m) for m in s.get("models", [])),
            timeout_s=timeout_s,
            what=what,
        )
        return next(m for m in status["models"] if m["model"] == name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
