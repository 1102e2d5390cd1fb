"""The demo's subprocesses: one `edgefabric up`, and per device `edgefabric-agent enroll` then `run`.

They are the real commands (`python -m control_plane.cli` / `python -m edge_agent.cli` of this
interpreter, so no PATH lookup can pick another install), each with its own log file.

Invariants:
- No child outlives the demo. Each is started from the main thread with `PR_SET_PDEATHSIG=SIGKILL`
  (Linux), so even `kill -9` of the demo kills it; their own children follow (`edgefabric up` starts
  nats-server the same way, and its compile worker exits when its stdin closes). `Supervisor` stops
  them in reverse start order on exit: SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`.
- Children run in their own session, so Ctrl-C reaches only the demo, which stops them in order.
- Their environment is the demo's without `EDGEFABRIC_*` variables, plus what the demo sets.
- Log files are 0600: `edgefabric up` prints the admin token.
- Every wait has a deadline; a child that exits while awaited fails the wait with its last log line.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from control_plane.demo.errors import DemoError

STOP_TIMEOUT_S = 20.0
CONTROL_PLANE_START_TIMEOUT_S = 90.0
ENROLL_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1

Transport = Literal["nats", "mqtt"]


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGKILLs it when the demo's main thread dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFABRIC_")}
    return env | {"PYTHONUNBUFFERED": "1"} | dict(extra)


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


class Child:
    """One long-running subprocess with its output in `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        log = _open_log(self.log_path)
        try:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                start_new_session=True,
            )
        except OSError as e:
            raise DemoError(f"cannot start {self.name}: {e.strerror or e}") from e
        finally:
            os.close(log)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def last_line(self) -> str:
        lines = [line for line in self.log().splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    def exited_error(self) -> DemoError:
        return DemoError(f"{self.name} exited with code {self.exit_code}: {self.last_line()}")


class Supervisor:
    """Owns every child of the demo; leaving the block stops them, the last started first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        child = Child(name, argv, _child_env(env or {}), self.log_dir / f"{name}.log")
        self.children.append(child)
        child.start()
        return child

    def run(self, name: str, argv: Sequence[str], timeout_s: float) -> str:
        """Run a short command to completion; its stdout, or a `DemoError` with its last stderr line."""
        log = self.log_dir / f"{name}.log"
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=_child_env({}),
                timeout=timeout_s,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as e:
            raise DemoError(f"{name} did not finish within {timeout_s:g} s") from e
        fd = _open_log(log)
        with os.fdopen(fd, "w") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
            raise DemoError(f"{name} exited with code {done.returncode}: {lines[-1].strip()}")
        return done.stdout

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in reversed(self.children):
            child.stop()


# --- the control plane ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ControlPlane:
    """Where the `edgefabric up` child serves, from its ready lines."""

    child: Child
    api_url: str
    nats_url: str
    mqtt_url: str
    admin_token: str
    admin_token_path: Path


def start_control_plane(supervisor: Supervisor, data_dir: Path, config_file: Path, port: int) -> ControlPlane:
    """`edgefabric up` on `data_dir` (embedded broker, no mDNS), once it printed "ready"."""
    child = supervisor.start(
        "control-plane",
        [
            sys.executable,
            "-m",
            "control_plane.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--no-advertise",
            "--config",
            str(config_file),
        ],
    )
    deadline = time.monotonic() + CONTROL_PLANE_START_TIMEOUT_S
    while True:
        lines = child.log().splitlines()
        if any(line.startswith("ready") for line in lines):
            break
        if child.exit_code is not None:
            raise child.exited_error()
        if time.monotonic() > deadline:
            raise DemoError(f"the control plane was not ready within {CONTROL_PLANE_START_TIMEOUT_S:g} s")
        time.sleep(_POLL_S)
    printed = dict(line.split(": ", 1) for line in lines if line.split(": ", 1)[0] in ("api", "nats", "mqtt"))
    token_path = data_dir / "admin.token"
    try:
        admin_token = token_path.read_text().strip()
    except OSError as e:
        raise DemoError(f"no admin token in {token_path}: {e.strerror}") from e
    if set(printed) != {"api", "nats", "mqtt"}:
        raise DemoError(f"the control plane did not print its api, nats and mqtt URLs (log {child.log_path})")
    return ControlPlane(
        child=child,
        api_url=printed["api"],
        nats_url=printed["nats"],
        mqtt_url=printed["mqtt"],
        admin_token=admin_token,
        admin_token_path=token_path,
    )


# --- agents --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    device_id: str
    profile: str
    transport: Transport


@dataclass(frozen=True, kw_only=True)
class Agent:
    spec: AgentSpec
    port: int
    """Its local inference API on 127.0.0.1."""
    child: Child


def enroll_agent(supervisor: Supervisor, spec: AgentSpec, api_url: str, token: str, agent_dir: Path) -> Path:
    """`edgefabric-agent enroll` for `spec`; returns the agent config it wrote."""
    config = agent_dir / "agent.toml"
    argv = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "enroll",
        "--url",
        api_url,
        "--token",
        token,
        "--config",
        str(config),
        "--state-dir",
        str(agent_dir / "state"),
        "--device-id",
        spec.device_id,
        "--profile",
        spec.profile,
    ]
    supervisor.run(
        f"enroll-{spec.device_id}", [*argv, "--mqtt"] if spec.transport == "mqtt" else argv, ENROLL_TIMEOUT_S
    )
    return config


def start_agent(
    supervisor: Supervisor, spec: AgentSpec, config: Path, env: Mapping[str, str], telemetry_interval_s: float
) -> Agent:
    """`edgefabric-agent run` with the enrolled config, its API on a free loopback port."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "run",
        "--config",
        str(config),
        "--http-port",
        str(port),
        "--telemetry-interval",
        f"{telemetry_interval_s:g}",
    ]
    return Agent(spec=spec, port=port, child=supervisor.start(f"agent-{spec.device_id}", argv, env))
