"""`edgefabric up` and `edgefabric tokens` as an operator runs them: real subprocesses, real uvicorn,
the real embedded nats-server, mDNS on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

from control_plane.broker import EmbeddedBroker
from control_plane.discovery import SERVICE_TYPE, instance_name
from protocols import subjects
from protocols.transports.nats_bus import NatsBus

START_TIMEOUT_S = 60.0


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFABRIC_")}
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class ControlPlane:
    """`edgefabric up` in a subprocess; entering waits for its "ready" line."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = ["edgefabric", "up", "--data-dir", str(data_dir), "--port", "0", *args]
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr = (data_dir.parent / f"{data_dir.name}-stderr.log").open("ab")
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ControlPlane:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=_env()
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.lines or not self.lines[-1].startswith("ready"):
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"not ready in {START_TIMEOUT_S} s: {self.lines} / {self.stderr}"
                ) from None
            if line is None:
                raise AssertionError(f"exited before ready: {self.lines} / {self.stderr}")
            self.lines.append(line)

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
        return (self.data_dir.parent / f"{self.data_dir.name}-stderr.log").read_text()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=30)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


def edgefabric(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["edgefabric", *argv], capture_output=True, text=True, timeout=60, check=False, env=env or _env()
    )


# --- up: first start, restart, stop ------------------------------------------------------------


def test_first_start_prints_url_and_admin_token_once_and_restart_prints_none(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", _free_port()
    up = ["up", "--data-dir", str(data_dir), "--port", str(port), "--no-advertise", "--exit-after", "0.2"]

    first = edgefabric(*up)
    assert first.returncode == 0, first.stderr
    assert f"api: http://127.0.0.1:{port}" in first.stdout.splitlines()
    token_lines = [line for line in first.stdout.splitlines() if line.startswith("admin token: ")]
    assert len(token_lines) == 1
    token = token_lines[0].removeprefix("admin token: ")
    assert token.startswith("efp_") and first.stdout.count(token) == 1

    token_file = data_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / "control-plane.db").is_file() and (data_dir / "blobs").is_dir()

    second = edgefabric(*up)
    assert second.returncode == 0, second.stderr
    assert "efp_" not in second.stdout and "admin token" not in second.stdout
    assert f"api: http://127.0.0.1:{port}" in second.stdout.splitlines()
    assert token_file.read_text().strip() == token


def test_restart_keeps_tokens_and_broker_urls(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ControlPlane(data_dir, "--no-advertise") as first:
        admin = first.value("admin token")
        urls = (first.value("nats"), first.value("mqtt"))
        status, me = _get(f"{first.api}/api/v1/me", admin)
        assert (status, me["role"]) == (200, "admin")
        assert first.stop() == 0
    with ControlPlane(data_dir, "--no-advertise") as second:
        assert not any(line.startswith("admin token") for line in second.lines)
        assert (second.value("nats"), second.value("mqtt")) == urls
        status, me = _get(f"{second.api}/api/v1/me", admin)
        assert (status, me["name"]) == (200, "bootstrap-admin")
        assert second.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_api_and_embedded_broker_cleanly(tmp_path: Path, signum: int) -> None:
    with ControlPlane(tmp_path / "data", "--no-advertise") as running:
        api_port = int(running.api.rsplit(":", 1)[1])
        nats_port = int(running.value("nats").rsplit(":", 1)[1])
        assert _get(f"{running.api}/api/v1/health")[0] == 200
        assert running.stop(signum) == 0
    assert not _is_listening(api_port) and not _is_listening(nats_port)
    assert "Traceback" not in running.stderr


def test_metrics_and_openapi_are_served_by_uvicorn(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "data", "--no-advertise") as running:
        status, document = _get(f"{running.api}/schema/openapi.json")
        assert status == 200 and "/api/v1/tokens" in document["paths"]
        with urllib.request.urlopen(f"{running.api}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert "edgefabric_http_requests_total{" in response.read().decode()
        running.stop()


async def test_external_nats_url_is_provisioned_and_no_broker_is_started(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    data_dir = tmp_path / "data"
    up = ["up", "--data-dir", str(data_dir), "--port", "0", "--nats-url", broker.nats_url]
    result = await asyncio.to_thread(edgefabric, *up, "--no-advertise", "--exit-after", "0.1")
    assert result.returncode == 0, result.stderr
    assert f"nats: {broker.nats_url}" in result.stdout.splitlines()
    assert "mqtt:" not in result.stdout
    assert not (data_dir / "broker").exists()
    async with NatsBus(broker.nats_url) as bus:  # each lookup raises if `up` did not provision it
        twins = await bus.js.key_value(subjects.TWIN_BUCKET)
        assert (await twins.status()).bucket == subjects.TWIN_BUCKET
        assert (await bus.js.stream_info(subjects.TELEMETRY_STREAM)).config.name == subjects.TELEMETRY_STREAM


def test_busy_port_and_bad_config_fail_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = edgefabric("up", "--data-dir", str(tmp_path / "d"), "--port", str(port))
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines()[-1] == (
        f"edgefabric: cannot serve the API on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in busy.stderr and not (tmp_path / "d" / "broker").exists()

    bad = edgefabric("up", "--data-dir", str(tmp_path / "d"), "--port", "70000")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "invalid configuration" in bad.stderr and "port" in bad.stderr


# --- mDNS advertisement ------------------------------------------------------------------------


def test_advertisement_is_discoverable_on_loopback_and_withdrawn_on_stop(tmp_path: Path) -> None:
    events: queue.Queue[tuple[str, ServiceStateChange]] = queue.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        events.put((name, state_change))

    def wait_for(name: str, change: ServiceStateChange, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if events.get(timeout=0.2) == (name, change):
                    return
            except queue.Empty:
                continue
        raise AssertionError(f"no {change} for {name} within {timeout_s} s")

    zeroconf = Zeroconf(interfaces=["127.0.0.1"])
    try:
        browser = ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[on_change])
        with ControlPlane(tmp_path / "data") as running:
            port = int(running.api.rsplit(":", 1)[1])
            name = f"{instance_name(port)}.{SERVICE_TYPE}"
            wait_for(name, ServiceStateChange.Added)
            info = zeroconf.get_service_info(SERVICE_TYPE, name, timeout=3000)
            assert info is not None and info.port == port
            assert info.parsed_addresses() == ["127.0.0.1"]
            assert info.properties == {b"api": running.api.encode(), b"nats": running.value("nats").encode()}
            assert running.stop() == 0
            wait_for(name, ServiceStateChange.Removed)
        browser.cancel()
    finally:
        zeroconf.close()


# --- tokens CLI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("cli") / "data", "--no-advertise") as running:
        yield running
        running.stop()


def _as(control_plane: ControlPlane, token: str) -> dict[str, str]:
    return _env(EDGEFABRIC_URL=control_plane.api, EDGEFABRIC_TOKEN=token)


def _admin(control_plane: ControlPlane) -> dict[str, str]:
    return _as(control_plane, control_plane.value("admin token"))


def test_tokens_create_list_revoke_through_the_api(control_plane: ControlPlane) -> None:
    created = edgefabric(
        "tokens", "create", "--name", "ci-bot", "--role", "operator", env=_admin(control_plane)
    )
    assert created.returncode == 0, created.stderr
    header, row, secret_line = created.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "ROLE", "STATUS", "CREATED", "EXPIRES", "LAST", "USED"]
    token_id = row.split()[0]
    assert row.split()[1:4] == ["ci-bot", "operator", "active"]
    secret = secret_line.rsplit(" ", 1)[1]
    assert secret.startswith(f"efp_{token_id}_")
    assert _get(f"{control_plane.api}/api/v1/me", secret)[1]["role"] == "operator"

    listed = edgefabric("tokens", "list", "--json", env=_admin(control_plane))
    assert listed.returncode == 0, listed.stderr
    tokens = {token["id"]: token for token in json.loads(listed.stdout)}
    assert tokens[token_id]["name"] == "ci-bot" and "token" not in tokens[token_id]

    table = edgefabric("tokens", "list", env=_admin(control_plane))
    assert "ci-bot" in table.stdout and "bootstrap-admin" in table.stdout and "efp_" not in table.stdout

    revoked = edgefabric("tokens", "revoke", token_id, env=_admin(control_plane))
    assert (
        revoked.returncode == 0 and revoked.stdout.strip() == f"revoked token {token_id} (ci-bot, operator)"
    )
    assert _get(f"{control_plane.api}/api/v1/me", secret)[0] == 401


def test_tokens_create_json_and_flags_instead_of_environment(control_plane: ControlPlane) -> None:
    flags = ["--url", control_plane.api, "--token", control_plane.value("admin token")]
    result = edgefabric(
        "tokens", "create", "--name", "dash", "--role", "viewer", "--ttl-days", "2", "--json", *flags
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["role"] == "viewer" and created["token"].startswith("efp_") and created["expires_at"]


@pytest.mark.parametrize(
    ("argv", "token", "message"),
    [
        (["tokens", "list"], f"efp_{'0' * 16}_{'0' * 64}", "HTTP 401 unauthenticated: invalid token"),
        (["tokens", "create", "--name", "x", "--role", "viewer", "--ttl-days", "9999"], None, "HTTP 422"),
        (["tokens", "revoke", "ffffffffffffffff"], None, "HTTP 404 not_found"),
    ],
)
def test_token_command_errors_are_one_line_and_exit_1(
    control_plane: ControlPlane, argv: Sequence[str], token: str | None, message: str
) -> None:
    env = _as(control_plane, token) if token else _admin(control_plane)
    result = edgefabric(*argv, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_operator_cannot_create_tokens_from_the_cli(control_plane: ControlPlane) -> None:
    created = edgefabric(
        "tokens", "create", "--name", "op", "--role", "operator", "--json", env=_admin(control_plane)
    )
    operator = json.loads(created.stdout)["token"]
    result = edgefabric(
        "tokens", "create", "--name", "x", "--role", "admin", env=_as(control_plane, operator)
    )
    assert result.returncode == 1 and "HTTP 403 forbidden" in result.stderr


def test_token_commands_without_a_reachable_api_fail_with_one_line(tmp_path: Path) -> None:
    unreachable = edgefabric(
        "tokens", "list", env=_env(EDGEFABRIC_URL=f"http://127.0.0.1:{_free_port()}", EDGEFABRIC_TOKEN="t")
    )
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1
    assert "cannot reach the API" in unreachable.stderr
    missing = edgefabric("tokens", "list")
    assert missing.returncode == 1 and "EDGEFABRIC_URL" in missing.stderr
    usage = edgefabric("tokens", "create", "--name", "x", "--role", "root")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
