"""`edgefabric-agent`: the device command line.

Loads configuration once and hands it down; each subcommand is a small handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import msgspec

from hardware_profiles.detect import explain
from hardware_profiles.report import render_table
from protocols.cli_support import EXIT_FAILED, EXIT_OK, OneLineArgumentParser, run_cli


def _version() -> str:
    try:
        return version("edgefabric")
    except PackageNotFoundError:
        return "unknown"


def _profiles(args: argparse.Namespace) -> int:
    detection = explain()
    if args.json:
        sys.stdout.write(msgspec.json.encode(detection, order="deterministic").decode() + "\n")
    else:
        print(render_table(detection.usable))
        for rejected in detection.rejected if args.all else ():
            print(f"  not usable: {rejected.name}: {'; '.join(rejected.reasons)}")
        for problem in detection.facts.probe_errors:
            print(f"  probe problem: {problem}", file=sys.stderr)
    return EXIT_OK if detection.usable else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="edgefabric-agent",
        description="EdgeFabric edge agent: verifies, installs and serves models on this device.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    profiles = commands.add_parser(
        "profiles", help="hardware profiles usable on this host, most preferred first, with evidence"
    )
    profiles.add_argument("--json", action="store_true", help="machine-readable output")
    profiles.add_argument("--all", action="store_true", help="also list unusable profiles and why")
    profiles.set_defaults(handler=_profiles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
