"""REST and service values of compile jobs.

A job compiles one model version for a list of hardware profiles. Its `state` moves only forward:
`queued -> running -> succeeded | failed | interrupted`. Each profile moves
`pending -> running -> built | rejected | failed`; `stage` is the compiler's latest progress text
for it. Request bodies forbid unknown fields (a typo is a 400, not ignored).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from protocols.identifiers import ProfileName
from protocols.manifest import LatencyStats, ValidationMetrics

JobState = Literal["queued", "running", "succeeded", "failed", "interrupted"]
BuildStatus = Literal["pending", "running", "built", "rejected", "failed"]
Quantization = Literal["static-qdq", "dynamic"]

FINISHED_STATES: frozenset[JobState] = frozenset({"succeeded", "failed", "interrupted"})
FINISHED_BUILDS: frozenset[BuildStatus] = frozenset({"built", "rejected", "failed"})


class StartCompileRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/v1/models/{name}/versions/{version}/compile`."""

    profiles: Annotated[list[ProfileName], msgspec.Meta(min_length=1, max_length=64)] | None = None
    """Hardware profiles to build for (duplicates are dropped); None: every packaged profile."""
    quantization: Quantization | None = None
    """Override the INT8 method of onnxruntime profiles; None: each profile's own recipe."""


class ProfileBuild(msgspec.Struct, frozen=True, kw_only=True):
    """One profile of a job: its progress and, once finished, what the compiler measured."""

    profile: str
    status: BuildStatus
    stage: str | None = None
    """The compiler's latest progress text for this profile (`validating`, `benchmarking`, ...)."""
    reason: str | None = None
    """Why the build was rejected (the validation gate's numbers) or failed."""
    precision: str | None = None
    recipe: str | None = None
    """The quantization recipe of the last attempt (`default: static-qdq`, `conservative: ...`)."""
    validation: ValidationMetrics | None = None
    """The build against the FP32 model on held-out samples (built and rejected builds)."""
    host_latency: LatencyStats | None = None
    """p50/p95 on the compiling host, from the artifact manifest (built only)."""
    size_bytes: int | None = None
    """Total size of the artifact's files (built only)."""


class CompileJob(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    model: str
    version: str
    quantization: Quantization | None
    state: JobState
    """`succeeded` once at least one profile built; `failed` if none did."""
    reason: str | None
    """Why the whole job failed or was interrupted (worker crash, timeout, control plane stop)."""
    profiles: list[ProfileBuild]
    created_at: datetime
    created_by: str
    """Id of the token that started it."""
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES


class CompileJobPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[CompileJob]
    total: int
    limit: int
    offset: int
