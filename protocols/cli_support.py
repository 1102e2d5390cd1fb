"""Command-line conventions shared by `edgefabric` and `edgefabric-agent`.

Exit codes (documented in README): 0 success, 1 the operation failed (a `FabricError`, one line
on stderr), 2 usage error (one line on stderr), 130 interrupted. A user never sees a traceback
for a failure we anticipated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

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


class Progress:
    """Progress on stderr: a redrawn bar on a terminal, one line per step otherwise (CI logs).

    `step(label, detail)` reports what is happening; `advance()` counts one unit of `total` done.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, width: int = 24) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._stream = stream or sys.stderr
        self._width = width
        self._is_tty = self._stream.isatty()

    def step(self, label: str, detail: str) -> None:
        if self._is_tty:
            filled = self._width * self.done // self.total
            bar = "#" * filled + "." * (self._width - filled)
            line = f"[{bar}] {self.done}/{self.total} {label}: {detail}"
            self._stream.write("\r\x1b[2K" + line[:160])
        else:
            self._stream.write(f"[{self.done}/{self.total}] {label}: {detail}\n")
        self._stream.flush()

    def advance(self) -> None:
        self.done = min(self.done + 1, self.total)

    def close(self) -> None:
        if self._is_tty:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (no box drawing, pipes well into grep)."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    return "\n".join(lines)
