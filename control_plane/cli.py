"""`edgefabric`: the operator and control-plane command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from control_plane.auth.cli import add_token_commands
from control_plane.broker import EmbeddedBroker
from control_plane.compile_jobs.cli import add_compile_commands
from control_plane.config import DEFAULT_PORT, load_config
from control_plane.demo.cli import add_demo_command
from control_plane.fleet.cli import add_device_commands
from control_plane.registry.cli import add_model_commands
from control_plane.releases.cli import add_release_commands
from control_plane.rollouts.cli import add_rollout_commands
from control_plane.telemetry.cli import add_telemetry_command
from model_compiler.signing.cli import add_signing_commands
from protocols.cli_support import EXIT_OK, OneLineArgumentParser, run_cli

if TYPE_CHECKING:
    from control_plane.server import Ready


def _version() -> str:
    try:
        return version("edgefabric")
    except PackageNotFoundError:
        return "unknown"


def _broker(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="edgefabric-broker-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(data_dir) as broker:
        print(f"nats: {broker.nats_url}")
        print(f"mqtt: {broker.mqtt_url}")
        print(f"data: {data_dir}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(args.exit_after)  # None: until SIGTERM or Ctrl-C
    return EXIT_OK


def _up(args: argparse.Namespace) -> int:
    config = load_config(
        file=Path(args.config) if args.config else None,
        environ=os.environ,
        overrides={
            "data_dir": args.data_dir,
            "host": args.host,
            "port": args.port,
            "nats_url": args.nats_url,
            "advertise": False if args.no_advertise else None,
        },
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    # Only `up` needs the API stack (Litestar, uvicorn, zeroconf); the other commands start without it.
    from control_plane.server import run

    run(config, on_ready=_print_ready, exit_after_s=args.exit_after)
    return EXIT_OK


def _print_ready(ready: Ready) -> None:
    print(f"api: {ready.api_url}")
    print(f"nats: {ready.nats_url}")
    if ready.mqtt_url is not None:
        print(f"mqtt: {ready.mqtt_url}")
    print(f"data: {ready.data_dir}")
    if ready.admin_token is not None:
        print(f"admin token: {ready.admin_token}")
        print(f"  shown once; also saved to {ready.admin_token_path} (mode 0600)")
    print("ready (Ctrl-C to stop)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="edgefabric",
        description="EdgeFabric: compile, sign and roll out models to edge fleets over NATS or MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    broker = commands.add_parser(
        "broker", help="run the embedded nats-server (JetStream + MQTT) on loopback until Ctrl-C"
    )
    broker.add_argument("--data-dir", help="JetStream store and logs (default: a new temporary dir)")
    broker.add_argument("--exit-after", type=float, metavar="SECONDS", help="stop after this long")
    broker.set_defaults(handler=_broker)

    up = commands.add_parser(
        "up", help="run the control plane: REST API, embedded broker, mDNS advertisement (until Ctrl-C)"
    )
    up.add_argument(
        "--config", metavar="FILE.toml", help="settings file (flags and EDGEFABRIC_* win over it)"
    )
    up.add_argument("--data-dir", help="database, blobs, broker store, admin.token (created on first start)")
    up.add_argument("--host", help="address to serve the API on (default 127.0.0.1)")
    up.add_argument("--port", type=int, help=f"API port (default {DEFAULT_PORT}; 0 picks a free one)")
    up.add_argument("--nats-url", help="use this NATS server instead of starting the embedded one")
    up.add_argument("--no-advertise", action="store_true", help="do not announce _edgefabric._tcp over mDNS")
    up.add_argument("--exit-after", type=float, metavar="SECONDS", help="stop this long after ready")
    up.set_defaults(handler=_up)

    add_token_commands(commands, os.environ)
    add_model_commands(commands, os.environ)
    add_device_commands(commands, os.environ)
    add_release_commands(commands, os.environ)
    add_telemetry_command(commands, os.environ)
    add_rollout_commands(commands, os.environ)
    add_compile_commands(commands, os.environ)
    add_demo_command(commands)
    add_signing_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
