"""`CompileJobRunner`: the background worker that runs queued compile jobs, one at a time.

Each job runs in a `python -m control_plane.compile_jobs.worker` subprocess (protocol: `messages`);
the runner only writes the job's request to it, reads its progress lines and records them, all on
the event loop, which therefore stays free while the CPU-heavy compile runs elsewhere.

Invariants:
- At most one job runs at a time, in the order jobs were queued. The queue is the `compile_jobs`
  table, polled every `poll_interval_s`, so jobs queued before a restart still run after it.
- A job the runner finds `running` when it starts was cut off by a crash of an earlier process: it
  becomes `interrupted` and is not re-run (a toolchain that brought the process down would do so
  again at every start); start a new job for it.
- On `stop()`, the running job's worker is ended (its stdin closed; SIGKILL if it lingers) and the
  job becomes `interrupted`.
- A job still running after `timeout_s` is stopped and fails; so does one whose worker exits
  without reporting (a crash): the reason names the exit code and the worker's log.
- A job that did not succeed leaves no output directory; the worker's stderr (toolchain output)
  stays in `<build_dir>/<job_id>.log` for every job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import msgspec

from control_plane.compile_jobs.messages import Failed, Finished, Progressed, WorkerRequest, message_decoder
from control_plane.compile_jobs.schemas import CompileJob
from control_plane.compile_jobs.services import CompileJobService
from control_plane.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

WORKER_MODULE = "control_plane.compile_jobs.worker"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
EXIT_GRACE_S = 10.0
STOP_GRACE_S = 5.0
STOPPED_REASON = "the control plane stopped during the compile"


class CompileJobRunner:
    def __init__(self, jobs: CompileJobService, *, timeout_s: float, poll_interval_s: float = 0.5) -> None:
        self._jobs = jobs
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for job_id in self._jobs.interrupt_leftovers():
            logger.warning("compile job %s was running when the control plane stopped: interrupted", job_id)
            await asyncio.to_thread(self._jobs.discard_output, job_id)
        self._task = asyncio.create_task(self._run_queue(), name="compile-jobs")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run_queue(self) -> None:
        while True:
            claimed = self._jobs.claim_next()
            if claimed is None:
                await asyncio.sleep(self._poll_interval_s)
                continue
            job, request = claimed
            try:
                await self._run(job, request)
            except Exception as e:  # a bug here must not stop every later job
                logger.exception("compile job %s: the runner failed", job.id)
                failed = self._jobs.finish(
                    job.id, Failed(reason=f"internal error in the compile runner: {e}")
                )
                if failed.state != "succeeded":  # it may have failed after recording a success
                    await asyncio.to_thread(self._jobs.discard_output, job.id)

    async def _run(self, job: CompileJob, request: WorkerRequest) -> None:
        logger.info("compile job %s: %s version %s, %s", job.id, job.model, job.version, request.profiles)
        with self._jobs.log_path(job.id).open("ab") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=MAX_MESSAGE_BYTES,
            )
        exit_grace_s = EXIT_GRACE_S
        try:
            try:
                outcome = await asyncio.wait_for(self._follow(job, worker, request), self._timeout_s)
            except TimeoutError:
                outcome = Failed(reason=f"the compile took longer than {self._timeout_s:g} s and was stopped")
                exit_grace_s = 0
            except asyncio.CancelledError:
                await _end(worker, exit_grace_s=0)
                self._jobs.interrupt(job.id, STOPPED_REASON)
                await asyncio.to_thread(self._jobs.discard_output, job.id)
                raise
            finished = self._jobs.finish(job.id, outcome)
            logger.info("compile job %s: %s", job.id, finished.state)
            # A worker that reported may take a moment to shut its toolchains down (they may have
            # children of their own); the job is already recorded meanwhile.
            await _end(worker, exit_grace_s=exit_grace_s)
        finally:
            if worker.returncode is None:  # cancelled while ending it
                await _end(worker, exit_grace_s=0)
        if finished.state != "succeeded":
            await asyncio.to_thread(self._jobs.discard_output, job.id)

    async def _follow(
        self, job: CompileJob, worker: asyncio.subprocess.Process, request: WorkerRequest
    ) -> Finished | Failed:
        """Send the request and record progress until the worker reports its outcome (or exits)."""
        assert worker.stdin is not None and worker.stdout is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it died at once: see below
            worker.stdin.write(msgspec.json.encode(request) + b"\n")
            await worker.stdin.drain()
        while line := await worker.stdout.readline():
            try:
                message = message_decoder.decode(line)
            except msgspec.DecodeError:
                return Failed(reason=f"unreadable message from the compile worker: {line[:200]!r}")
            if not isinstance(message, Progressed):
                return message  # its output is complete: no need to wait for the toolchains' teardown
            self._jobs.record_progress(job.id, message.profile, message.stage)
        code = await worker.wait()
        return Failed(
            reason=f"the compile worker exited with code {code} before reporting "
            f"(see {self._jobs.log_path(job.id)})"
        )


async def _end(worker: asyncio.subprocess.Process, *, exit_grace_s: float) -> None:
    """Let the worker exit by itself for `exit_grace_s`, then close its stdin (it exits at once), then
    SIGKILL after `STOP_GRACE_S`. Its stdin is closed in any case, so its pipes can be released."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(worker.wait(), exit_grace_s)
    assert worker.stdin is not None
    worker.stdin.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(worker.wait(), STOP_GRACE_S)
    if worker.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        await worker.wait()
