"""What `edgefabric demo` prints: one numbered line per step with its outcome and duration, progress
while a step waits, details under each step, and the closing summary.

On a terminal the running step's line is redrawn with its latest progress; elsewhere (logs, tests)
progress prints as indented lines, only when its text changed and at most one per `PROGRESS_EVERY_S`.

Invariants:
- Every step started ends with exactly one line `[n/N] title ... outcome (1.2 s)`, or `... FAILED (1.2 s)`
  followed by the reason, then its indented detail lines.
- A step that fails with a `FabricError` or `OSError` raises `StepFailedError` carrying the same reason,
  so the command's one stderr line and the printed story agree. Other exceptions pass unchanged.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from control_plane.demo.errors import StepFailedError
from protocols.cli_support import render_table
from protocols.errors import FabricError

PROGRESS_EVERY_S = 5.0
_INDENT = "       "
_SUMMARY_HEADERS = ("AGENT", "PROFILE", "TRANSPORT", "SERVING", "REQUESTS", "ACCURACY", "P95 MS")


@dataclass(frozen=True, kw_only=True)
class AgentSummary:
    """One row of the closing table."""

    device_id: str
    profile: str
    transport: str
    serving: str | None
    requests: int
    accuracy: float
    p95_ms: float | None


@dataclass(frozen=True, kw_only=True)
class Outcome:
    api_url: str
    admin_token_path: Path
    agents: list[AgentSummary]
    agent_ports: dict[str, int]
    background_requests: int


class Step:
    """The running step: report progress, add details, and set the outcome word."""

    def __init__(self, report: Report, number: int, title: str) -> None:
        self.number = number
        self.title = title
        self.outcome = "done"
        self.details: list[str] = []
        self._report = report
        self._last_progress = ""
        self._last_progress_at = 0.0

    @property
    def head(self) -> str:
        return f"[{self.number}/{self._report.total_steps}] {self.title} ..."

    def progress(self, text: str) -> None:
        if text == self._last_progress:
            return
        now = time.monotonic()
        if self._report.is_tty:
            self._report.redraw(f"{self.head} {text}")
        elif now - self._last_progress_at >= PROGRESS_EVERY_S:
            self._report.write(f"{_INDENT}... {text}")
            self._last_progress_at = now
        else:
            return
        self._last_progress = text

    def detail(self, text: str) -> None:
        self.details.append(text)

    def done(self, outcome: str) -> None:
        self.outcome = outcome


class Report:
    def __init__(self, total_steps: int, stream: TextIO | None = None) -> None:
        self.total_steps = total_steps
        self._stream = stream or sys.stdout
        self.is_tty = self._stream.isatty()
        self._next = 1

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        step = Step(self, self._next, title)
        self._next += 1
        started = time.monotonic()
        if self.is_tty:
            self.redraw(step.head)
        try:
            yield step
        except (FabricError, OSError) as e:
            reason = e.message if isinstance(e, FabricError) else f"{e.strerror or e}"
            self._finish(step, f"FAILED ({time.monotonic() - started:.1f} s)", [reason, *step.details])
            raise StepFailedError(step.number, title, reason) from e
        except KeyboardInterrupt:
            self._finish(step, "interrupted", step.details)
            raise
        self._finish(step, f"{step.outcome} ({time.monotonic() - started:.1f} s)", step.details)

    def write(self, line: str = "") -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def redraw(self, line: str) -> None:
        width = shutil.get_terminal_size().columns - 1
        self._stream.write("\r\x1b[2K" + line[:width])
        self._stream.flush()

    def _finish(self, step: Step, outcome: str, details: list[str]) -> None:
        if self.is_tty:
            self._stream.write("\r\x1b[2K")
        self.write(f"{step.head} {outcome}")
        for detail in details:
            self.write(f"{_INDENT}{detail}")


def print_summary(report: Report, outcome: Outcome, elapsed_s: float) -> None:
    """The closing table (one row per agent: the held-out checks of both rounds) and where to look next."""
    rows = [
        [
            a.device_id,
            a.profile,
            a.transport,
            f"v{a.serving}" if a.serving else "-",
            a.requests,
            f"{a.accuracy:.3f}",
            f"{a.p95_ms:.2f}" if a.p95_ms is not None else "-",
        ]
        for a in outcome.agents
    ]
    report.write()
    report.write(f"summary: every step did what it said, in {elapsed_s:.0f} s")
    report.write(render_table(_SUMMARY_HEADERS, rows))
    report.write(
        f"(held-out images through each agent's local API; plus {outcome.background_requests} "
        "background requests that fed the rollout gates)"
    )
    report.write()
    api = outcome.api_url
    report.write(f"API      {api}   OpenAPI: {api}/schema/openapi.json (there is no web dashboard yet)")
    report.write(f"token    {outcome.admin_token_path} (admin)")
    token = f"$(cat {outcome.admin_token_path})"
    report.write(f'try      curl -s -H "Authorization: Bearer {token}" {api}/api/v1/devices')
    for device_id, port in outcome.agent_ports.items():
        report.write(f"         curl -s http://127.0.0.1:{port}/v2/models/digits   # {device_id}'s local API")
