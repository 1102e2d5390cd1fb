"""`edgefabric compile start|status|local`: compile jobs through the REST API, and the local compiler.

`start` queues a job (operator token); `status` shows jobs as a table, or one job's profiles with
their metrics; `--json` prints the API's JSON for scripts. `--wait` follows the jobs until they
finish, with a progress bar per job on stderr (redrawn on a terminal, one line per profile change
otherwise), and exits 1 when a job it waited for did not succeed. `local` is the offline compiler
(`model_compiler.cli`), which needs no control plane.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, TextIO, get_args

import msgspec

from control_plane.client import ApiClient, add_client_arguments
from control_plane.compile_jobs.schemas import (
    FINISHED_BUILDS,
    CompileJob,
    CompileJobPage,
    JobState,
    ProfileBuild,
    Quantization,
    StartCompileRequest,
)
from control_plane.errors import ControlPlaneError
from control_plane.pagination import MAX_PAGE_LIMIT
from model_compiler.cli import add_local_compile_command
from protocols.cli_support import EXIT_FAILED, EXIT_OK, render_table

POLL_INTERVAL_S = 1.0
DEFAULT_WAIT_TIMEOUT_S = 3600.0
_BAR_WIDTH = 24
_JOB_HEADERS = ("ID", "MODEL", "VERSION", "STATE", "BUILT", "CREATED", "FINISHED")
_PROFILE_HEADERS = (
    "PROFILE",
    "STATUS",
    "PRECISION",
    "TOP1-AGREE",
    "ACCURACY",
    "P50/P95 MS",
    "SIZE",
    "STAGE/WHY",
)


class WaitTimeoutError(ControlPlaneError):
    """`--wait` gave up: jobs were still unfinished after `--timeout` seconds (they keep running)."""

    def __init__(self, job_ids: Sequence[str], timeout_s: float) -> None:
        super().__init__(
            f"compile job(s) {', '.join(job_ids)} not finished after {timeout_s:g} s; they keep running"
        )
        self.job_ids = tuple(job_ids)
        self.timeout_s = timeout_s


def add_compile_commands(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    group = commands.add_parser(
        "compile", help="compile models: jobs in the control plane (start, status) or here (local)"
    )
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser("start", help="queue a compile job of a model version in the control plane")
    start.add_argument("model", metavar="MODEL", help="model name in the registry")
    start.add_argument("--version", required=True, help="model version")
    start.add_argument(
        "--profile", action="append", metavar="P", help="hardware profile (repeatable; default: all)"
    )
    start.add_argument("--quantization", choices=get_args(Quantization), help="override the INT8 method")
    _add_wait_arguments(start)
    add_client_arguments(start, environ)
    start.set_defaults(handler=_start)

    status = actions.add_parser("status", help="compile jobs, or one job's profiles and metrics")
    status.add_argument("job_id", nargs="?", metavar="JOB_ID", help="show this job's profiles")
    status.add_argument("--model", help="only jobs of this model")
    status.add_argument("--version", help="only jobs of this version")
    status.add_argument("--state", choices=get_args(JobState), help="only jobs in this state")
    _add_wait_arguments(status)
    add_client_arguments(status, environ)
    status.set_defaults(handler=_status)

    add_local_compile_command(actions)


def _add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="follow until finished; exit 1 if a job did not succeed"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up waiting after this long (default {DEFAULT_WAIT_TIMEOUT_S:g})",
    )


def _start(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    body = StartCompileRequest(profiles=args.profile, quantization=args.quantization)
    path = f"/api/v1/models/{_quoted(args.model)}/versions/{_quoted(args.version)}/compile"
    job = client.call("POST", path, CompileJob, body=body)
    if args.wait:
        (job,) = _follow(client, [job], args.timeout)
    if args.json:
        _print_json(job)
    elif args.wait:
        print(_job_details(job))
    else:
        print(
            f"queued compile job {job.id}: {job.model} version {job.version} for {len(job.profiles)} "
            f"profile(s); follow it with: edgefabric compile status {job.id} --wait"
        )
    return EXIT_FAILED if args.wait and job.state != "succeeded" else EXIT_OK


def _status(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    if args.job_id is not None:
        job = client.call("GET", f"/api/v1/compile-jobs/{_quoted(args.job_id)}", CompileJob)
        if args.wait:
            (job,) = _follow(client, [job], args.timeout)
        if args.json:
            _print_json(job)
        else:
            print(_job_details(job))
        return EXIT_FAILED if args.wait and job.state != "succeeded" else EXIT_OK
    filters = {"model": args.model, "version": args.version, "state": args.state}
    jobs = _all_jobs(client, {key: value for key, value in filters.items() if value is not None})
    waited: list[CompileJob] = []
    if args.wait:
        waited = _follow(client, [job for job in jobs if not job.is_finished], args.timeout)
        by_id = {job.id: job for job in waited}
        jobs = [by_id.get(job.id, job) for job in jobs]
    if args.json:
        _print_json(jobs)
    else:
        print(render_table(_JOB_HEADERS, [_job_row(job) for job in jobs]))
    return EXIT_FAILED if any(job.state != "succeeded" for job in waited) else EXIT_OK


def _all_jobs(client: ApiClient, filters: Mapping[str, str]) -> list[CompileJob]:
    jobs: list[CompileJob] = []
    while True:
        query: dict[str, str | int] = {**filters, "limit": MAX_PAGE_LIMIT, "offset": len(jobs)}
        page = client.call("GET", "/api/v1/compile-jobs", CompileJobPage, query=query)
        jobs.extend(page.items)
        if not page.items or len(jobs) >= page.total:
            return jobs


def _follow(client: ApiClient, jobs: list[CompileJob], timeout_s: float) -> list[CompileJob]:
    """Poll `jobs` until every one is finished, drawing their progress; the finished jobs."""
    current = {job.id: job for job in jobs}
    board = _JobBoard(sys.stderr)
    deadline = time.monotonic() + timeout_s
    while True:
        board.show(list(current.values()))
        unfinished = [job_id for job_id, job in current.items() if not job.is_finished]
        if not unfinished:
            return list(current.values())
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(unfinished, timeout_s)
        time.sleep(POLL_INTERVAL_S)
        for job_id in unfinished:
            current[job_id] = client.call("GET", f"/api/v1/compile-jobs/{_quoted(job_id)}", CompileJob)


class _JobBoard:
    """One progress bar per job: redrawn in place on a terminal, else a line per profile change."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._is_tty = stream.isatty()
        self._drawn_lines = 0
        self._seen: dict[tuple[str, str], tuple[str, str | None]] = {}

    def show(self, jobs: list[CompileJob]) -> None:
        if self._is_tty:
            if self._drawn_lines:
                self._stream.write(f"\x1b[{self._drawn_lines}F")
            for job in jobs:
                self._stream.write("\x1b[2K" + _bar_line(job)[:160] + "\n")
            self._drawn_lines = len(jobs)
        else:
            for job in jobs:
                for build in job.profiles:
                    now = (build.status, build.stage)
                    if build.stage is not None and self._seen.get((job.id, build.profile)) != now:
                        self._seen[(job.id, build.profile)] = now
                        self._line(job, f" {build.profile}: {build.stage}")
                if job.is_finished and self._seen.get((job.id, "")) is None:
                    self._seen[(job.id, "")] = (job.state, None)
                    self._line(job, f": {job.state}")
        self._stream.flush()

    def _line(self, job: CompileJob, detail: str) -> None:
        self._stream.write(f"[{_done(job)}/{len(job.profiles)}] {_label(job)}{detail}\n")


def _bar_line(job: CompileJob) -> str:
    total = max(len(job.profiles), 1)
    filled = _BAR_WIDTH * _done(job) // total
    active = next((b for b in job.profiles if b.status == "running"), None)
    doing = job.state if active is None else f"{active.profile}: {active.stage}"
    return f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {_done(job)}/{total} {_label(job)}: {doing}"


def _label(job: CompileJob) -> str:
    return f"{job.id} {job.model} {job.version}"


def _done(job: CompileJob) -> int:
    return sum(build.status in FINISHED_BUILDS for build in job.profiles)


def _job_row(job: CompileJob) -> list[str]:
    built = sum(build.status == "built" for build in job.profiles)
    return [
        job.id,
        job.model,
        job.version,
        job.state,
        f"{built}/{len(job.profiles)}",
        job.created_at.strftime("%Y-%m-%d %H:%M"),
        "-" if job.finished_at is None else job.finished_at.strftime("%Y-%m-%d %H:%M"),
    ]


def _job_details(job: CompileJob) -> str:
    head = f"compile job {job.id}: {job.model} version {job.version}, {job.state}"
    if job.reason is not None:
        head += f" ({job.reason})"
    return head + "\n\n" + render_table(_PROFILE_HEADERS, [_profile_row(build) for build in job.profiles])


def _profile_row(build: ProfileBuild) -> list[str]:
    metrics, latency = build.validation, build.host_latency
    return [
        build.profile,
        build.status,
        build.precision or "-",
        "-" if metrics is None else f"{metrics.top1_agreement:.3f}",
        "-" if metrics is None or metrics.accuracy is None else f"{metrics.accuracy:.3f}",
        "-" if latency is None else f"{latency.p50_ms:.2f}/{latency.p95_ms:.2f}",
        "-" if build.size_bytes is None else f"{build.size_bytes / 1024:.0f} KiB",
        (build.stage if build.status == "running" else build.reason) or "",
    ]


def _quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
