"""`edgefabric`: the operator and control-plane command line."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from control_plane.broker import EmbeddedBroker
from model_compiler.cli import add_compile_command
from model_compiler.signing.cli import add_signing_commands
from protocols.cli_support import EXIT_OK, OneLineArgumentParser, run_cli


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

    add_compile_command(commands)
    add_signing_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
