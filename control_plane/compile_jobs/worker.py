"""`python -m control_plane.compile_jobs.worker`: one compile job, in a process of its own.

`CompileJobRunner` starts one per job, so compiler code never runs in the control plane's process:
a toolchain that crashes, leaks or holds the GIL takes down or slows only this process. It reads
its `WorkerRequest` from stdin and reports on stdout (see `messages` for the protocol), runs
`model_compiler.compiler.compile_model` and exits.

Exit codes: 0 reported `Finished`; 1 reported `Failed` (or crashed before reporting); 3 its stdin
closed before it exited by itself (the runner is done with it, or the control plane is gone).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import msgspec

from control_plane.compile_jobs.messages import (
    Failed,
    Finished,
    Progressed,
    WorkerMessage,
    request_decoder,
)
from control_plane.compile_jobs.schemas import ProfileBuild
from model_compiler.compiler import CompileRequest, ProfileResult, compile_model
from protocols.cli_support import EXIT_FAILED, EXIT_OK
from protocols.errors import FabricError

EXIT_ORPHANED = 3
_encoder = msgspec.json.Encoder()


def build_of(result: ProfileResult) -> ProfileBuild:
    """What the API shows of one profile's compile result (metrics from its last attempt)."""
    attempt = result.attempts[-1] if result.attempts else None
    manifest = result.manifest
    recipe = None if attempt is None else f"{attempt.recipe}: {attempt.quantization}"
    return ProfileBuild(
        profile=result.profile,
        status=result.status,
        stage=result.status,
        reason=result.reason,
        precision=None if manifest is None else manifest.precision,
        recipe=recipe if manifest is None else manifest.recipe,
        validation=None if attempt is None else attempt.metrics,
        host_latency=None if manifest is None else manifest.host_latency,
        size_bytes=None if manifest is None else sum(file.size_bytes for file in manifest.files),
    )


def main() -> int:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # toolchains (NNCF, OpenVINO) print to stdout
    request = request_decoder.decode(sys.stdin.buffer.readline())
    control = os.dup(sys.stdin.fileno())
    _stdin_from_devnull()
    threading.Thread(target=_exit_when_orphaned, args=(control,), name="orphan-watch", daemon=True).start()

    def send(message: WorkerMessage) -> None:
        protocol.write(_encoder.encode(message) + b"\n")

    try:
        report = compile_model(
            CompileRequest(
                model_path=Path(request.model_path),
                profiles=tuple(request.profiles),
                out_dir=Path(request.out_dir),
                model_name=request.model,
                version=request.version,
                calibration_path=None if request.calibration_path is None else Path(request.calibration_path),
                validation_path=None if request.validation_path is None else Path(request.validation_path),
                quantization=request.quantization,
            ),
            lambda profile, stage: send(Progressed(profile=profile, stage=stage)),
        )
    except FabricError as e:
        send(Failed(reason=str(e)))
        return EXIT_FAILED
    send(Finished(builds=[build_of(result) for result in report.results]))
    return EXIT_OK


def _stdin_from_devnull() -> None:
    """Nothing else reads the control pipe: a toolchain that forks (OpenVINO's telemetry does) would
    otherwise start a child that waits forever on the lock of a `sys.stdin` being read in a thread."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, sys.stdin.fileno())
    os.close(devnull)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - replaces the interpreter's stdin for the process' life


def _exit_when_orphaned(control: int) -> None:
    """Stop at once when the control pipe closes: the control plane that started this worker is done
    with it or gone. Raw reads: no Python-level lock is held while waiting."""
    while os.read(control, 4096):
        continue
    os._exit(EXIT_ORPHANED)


if __name__ == "__main__":
    sys.exit(main())
