"""`edgefabric demo`: run the story of `steps.py` in a temporary dir, print it, then keep serving.

Exit codes: 0 when every step did what it said (also when stopped with Ctrl-C or SIGTERM after the
summary); 1 with one line on stderr naming the step that failed and why; 130 interrupted before the
summary. The work dir (control-plane data, agent state, models, logs) is a new temporary dir removed
at exit, unless `--keep`; with `--data-dir` it is that dir, which must be empty or absent, and is kept.
Importing this module is cheap: the story (numpy, onnx, the API schemas) loads when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from control_plane.errors import ConfigError
from protocols.cli_support import EXIT_OK

if TYPE_CHECKING:
    from control_plane.demo.report import Report


def add_demo_command(commands: argparse._SubParsersAction[Any]) -> None:
    summary = (
        "the whole fabric on this machine: control plane, three agents, a model compiled, signed and "
        "rolled out with gates, and a bad release halted and rolled back"
    )
    demo = commands.add_parser("demo", help=summary, description=summary)
    demo.add_argument(
        "--exit-after",
        type=float,
        metavar="SECONDS",
        help="stop this long after the summary (0: at once); default: keep serving until Ctrl-C",
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary dir (data, logs) at exit")
    demo.add_argument("--data-dir", help="work in this dir instead (empty or absent; kept at exit)")
    demo.add_argument("--port", type=int, default=0, help="control-plane API port (default: a free one)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from control_plane.demo.processes import Supervisor
    from control_plane.demo.report import Report, print_summary
    from control_plane.demo.steps import Story

    if args.exit_after is not None and args.exit_after < 0:
        raise ConfigError("--exit-after", "must be 0 or more seconds")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"{args.port} is not a TCP port")
    work_dir, is_temporary = _work_dir(args.data_dir)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the children in order, as Ctrl-C does
    started = time.monotonic()
    is_told = False
    try:
        with Supervisor(work_dir / "logs") as supervisor:
            story = Story(work_dir, args.port, supervisor)
            report = Report(len(story.steps))
            report.write(f"EdgeFabric demo: everything runs on this machine, under {work_dir}")
            outcome = story.run(report)
            print_summary(report, outcome, time.monotonic() - started)
            is_told = True
            _serve(report, args.exit_after)
    finally:
        if is_temporary and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
            if not is_told:
                report.write(f"removed {work_dir} with the logs (--keep keeps them)")
        else:
            report.write(f"kept {work_dir} (logs in {work_dir / 'logs'})")
    return EXIT_OK


def _work_dir(data_dir: str | None) -> tuple[Path, bool]:
    if data_dir is None:
        return Path(tempfile.mkdtemp(prefix="edgefabric-demo-")), True
    path = Path(data_dir).expanduser().resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError("--data-dir", f"{path} must be an empty directory or not exist")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path, False


def _serve(report: Report, exit_after_s: float | None) -> None:
    """Keep everything running for the user to explore, until Ctrl-C/SIGTERM or `exit_after_s`."""
    if exit_after_s == 0:
        return
    if exit_after_s is None:
        report.write("running until Ctrl-C")
    else:
        report.write(f"running for {exit_after_s:g} s (--exit-after)")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait(exit_after_s)
    report.write("stopping")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
