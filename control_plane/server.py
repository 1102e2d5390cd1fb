"""`edgefabric up`: one control-plane process, from an empty data dir to a clean stop.

Start, in order: data dir (mode 0700: database migrated, blob dir) -> API socket bound (a busy port
fails before anything else starts) -> broker (the embedded nats-server under `<data_dir>/broker`,
unless `config.nats_url`) -> the admin token on first start -> uvicorn serving (its lifespan
connects the broker, provisions JetStream and starts the background workers) -> mDNS advertisement
-> `on_ready`. Stop (SIGTERM, SIGINT or `exit_after_s`) undoes it in reverse order.

Invariants:
- The admin token is issued once per data dir: on a database without tokens, written to
  `<data_dir>/admin.token` (mode 0600) inside the transaction that stores its hash, and reported
  once through `Ready.admin_token`; every later start reports None and keeps all tokens.
- `on_ready` runs only when the API answers and the advertisement is registered.
- The embedded broker only admits credentials of the data dir's `BrokerAuthority` (operator mode);
  the control plane connects as its service user. With `--nats-url` there is no authority.
- While serving, this module owns SIGTERM and SIGINT (uvicorn's own handlers are off), so a signal
  always runs the whole shutdown and the process exits normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvicorn
from litestar import Litestar
from sqlite_utils import Database

from control_plane.app import Endpoints, Services, create_app
from control_plane.broker import EmbeddedBroker
from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.clock import SystemClock
from control_plane.config import ControlPlaneConfig
from control_plane.db import migrate, open_database
from control_plane.discovery import advertise, advertised_addresses
from control_plane.errors import DataDirError, ServerStartError
from protocols.durable import write_atomic
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Ready:
    """What `edgefabric up` tells its operator once it serves."""

    api_url: str
    nats_url: str
    mqtt_url: str | None
    """The embedded broker's MQTT listener; None with an external NATS server."""
    data_dir: Path
    admin_token: str | None
    """The bootstrap admin token on first start; None on every later start."""
    admin_token_path: Path


def open_data_dir(config: ControlPlaneConfig) -> Database:
    """Create the data dir layout if missing and return its database, migrated to the current schema."""
    try:
        config.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.blob_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        raise DataDirError(config.data_path, e.strerror or str(e)) from e
    db = open_database(config.database_path)
    try:
        applied = migrate(db)
    except BaseException:
        db.close()
        raise
    if applied:
        logger.info("database %s migrated to schema %d", config.database_path, applied[-1])
    return db


def run(
    config: ControlPlaneConfig, *, on_ready: Callable[[Ready], None], exit_after_s: float | None = None
) -> None:
    """Serve until SIGTERM/SIGINT (or `exit_after_s` after ready), then stop everything."""
    with contextlib.ExitStack() as stack:
        db = open_data_dir(config)
        stack.callback(db.close)
        sock = stack.enter_context(_bind(config.host, config.port))
        authority: BrokerAuthority | None = None
        if config.nats_url is None:
            authority = BrokerAuthority.load_or_create(config.broker_auth_dir)
            broker = _start_broker(config.broker_dir, authority)
            stack.callback(broker.stop)
            nats_url, mqtt_url = broker.nats_url, broker.mqtt_url
            bus = NatsBus(
                nats_url, name="edgefabric-control-plane", user_auth=authority.service_credentials()
            )
        else:
            nats_url, mqtt_url = config.nats_url, None
            bus = NatsBus(nats_url, name="edgefabric-control-plane")
        api_url = f"http://{_url_host(advertised_addresses(config.host)[0])}:{sock.getsockname()[1]}"
        services = Services.build(
            config,
            db,
            SystemClock(),
            bus=bus,
            broker_authority=authority,
            endpoints=Endpoints(api_url=api_url, nats_url=nats_url, mqtt_url=mqtt_url),
        )
        created = services.tokens.bootstrap_admin(
            ttl_days=config.bootstrap_token_ttl_days,
            keep=lambda token: write_atomic(config.admin_token_path, f"{token}\n".encode(), mode=0o600),
        )
        ready = Ready(
            api_url=api_url,
            nats_url=nats_url,
            mqtt_url=mqtt_url,
            data_dir=config.data_path,
            admin_token=created.token if created else None,
            admin_token_path=config.admin_token_path,
        )
        asyncio.run(_serve(config, create_app(config, services), sock, ready, on_ready, exit_after_s))


class BrokerPorts(msgspec.Struct, frozen=True, kw_only=True):
    nats: int
    mqtt: int


def _start_broker(broker_dir: Path, authority: BrokerAuthority) -> EmbeddedBroker:
    """Start the embedded nats-server on the ports it had last time (`ports.json`), so URLs that
    agents were given stay valid across restarts; the first start lets the server pick free ports.
    It runs in operator mode: only credentials minted by `authority` get in."""
    broker = EmbeddedBroker(broker_dir, extra_config=authority.server_config(broker_dir / "jwt"))
    ports_file = broker_dir / "ports.json"
    if ports_file.exists():
        try:
            ports = msgspec.json.decode(ports_file.read_bytes(), type=BrokerPorts)
        except (OSError, msgspec.DecodeError) as e:
            raise DataDirError(ports_file, f"unreadable broker ports: {e}") from e
        broker.nats_port, broker.mqtt_port = ports.nats, ports.mqtt
    broker.start()
    try:
        write_atomic(
            ports_file, msgspec.json.encode(BrokerPorts(nats=broker.nats_port, mqtt=broker.mqtt_port))
        )
    except BaseException:
        broker.stop()
        raise
    return broker


class _Server(uvicorn.Server):
    """uvicorn without its signal handling (it would re-raise the signal after its own shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(
    config: ControlPlaneConfig,
    app: Litestar,
    sock: socket.socket,
    ready: Ready,
    on_ready: Callable[[Ready], None],
    exit_after_s: float | None,
) -> None:
    """Serve `app` on `sock` and advertise it; `on_ready` once both are up; stop on a signal."""
    port = int(sock.getsockname()[1])
    server = _Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await _until_started(server, serving, f"{config.host}:{port}")
        async with contextlib.AsyncExitStack() as stack:
            if config.advertise:
                await stack.enter_async_context(
                    advertise(host=config.host, port=port, api_url=ready.api_url, nats_url=ready.nats_url)
                )
            on_ready(ready)
            await _until_stopped(stop, serving, exit_after_s)
    finally:
        server.should_exit = True
        await serving
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    logger.info("control plane stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it keep-alive responses wait ~40 ms for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServerStartError(f"{host}:{port}", e.strerror or str(e)) from e
    return sock


def _url_host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


async def _until_started(server: uvicorn.Server, serving: asyncio.Task[None], address: str) -> None:
    while not server.started:
        if serving.done():
            serving.result()  # raises what stopped it
            raise ServerStartError(address, "uvicorn stopped during startup (see the log)")
        await asyncio.sleep(0.01)


async def _until_stopped(
    stop: asyncio.Event, serving: asyncio.Task[None], exit_after_s: float | None
) -> None:
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopped, serving}, timeout=exit_after_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
