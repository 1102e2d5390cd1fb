"""What the compile runner and its worker process say to each other.

The runner writes one `WorkerRequest` line (JSON) on the worker's stdin and keeps stdin open; the
worker answers on stdout with one `WorkerMessage` per line: `Progressed` while it works, then
exactly one `Finished` (every profile's outcome) or `Failed` (nothing could be compiled).

Invariants:
- Only these messages go to the worker's stdout: toolchain output is sent to its stderr.
- The worker exits as soon as its stdin reaches EOF, so it never outlives the control plane that
  started it (a `kill -9` of the control plane closes the pipe).
"""

from __future__ import annotations

import msgspec

from control_plane.compile_jobs.schemas import ProfileBuild, Quantization


class WorkerRequest(msgspec.Struct, frozen=True, kw_only=True):
    model_path: str
    calibration_path: str | None
    validation_path: str | None
    profiles: list[str]
    out_dir: str
    model: str
    version: str
    quantization: Quantization | None


class Progressed(msgspec.Struct, frozen=True, kw_only=True, tag="progressed"):
    profile: str
    stage: str


class Finished(msgspec.Struct, frozen=True, kw_only=True, tag="finished"):
    builds: list[ProfileBuild]


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag="failed"):
    reason: str


WorkerMessage = Progressed | Finished | Failed
message_decoder: msgspec.json.Decoder[WorkerMessage] = msgspec.json.Decoder(WorkerMessage)
request_decoder = msgspec.json.Decoder(WorkerRequest)
