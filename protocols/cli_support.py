"""Command-line conventions shared by `edgefabric` and `edgefabric-agent`.

Exit codes (documented in README): 0 success, 1 the operation failed (a `FabricError`, one line
on stderr), 2 usage error (one line on stderr), 130 interrupted. A user never sees a traceback
for a failure we anticipated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from protocols.errors import FabricError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one readable line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        message = message.replace("argument COMMAND: invalid choice:", "unknown command")
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


Handler = Callable[[argparse.Namespace], int]


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse `argv`, run the chosen subcommand's handler, and map failures to exit codes.

    Each subparser sets `handler` with `set_defaults(handler=...)`.
    """
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except FabricError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
