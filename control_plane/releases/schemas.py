"""REST and service values of the releases area.

A release is one model version signed for every hardware profile its compile job built: one TUF
target per profile, all sharing the release's `model_counter`. Each target keeps what later areas
need from the artifact's manifest (precision, the reference output histogram for drift, the host
latency), so rollouts and telemetry do not have to open archives.

`CreateReleaseRequest` forbids unknown fields (a typo is a 400, not ignored); answers are frozen Structs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import msgspec

from protocols.identifiers import ModelName, Version
from protocols.manifest import LatencyStats, OutputHistogram

CompileJobId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="id of a succeeded compile job of this model version",
    ),
]


class CreateReleaseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: ModelName
    version: Version
    compile_job_id: CompileJobId | None = None
    """The compile job whose artifacts to sign; default: the latest succeeded one of this version."""


class ReleaseTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One profile's artifact archive as signed in the TUF targets metadata."""

    hw_profile: str
    target_path: str
    """The TUF target path, `<model>/<version>/<profile>.tar`."""
    sha256: str
    """Content hash of the archive; devices fetch it as `sha256-<hex>` (Object Store and HTTP)."""
    size_bytes: int
    precision: str
    reference_histogram: OutputHistogram
    host_latency: LatencyStats


class ReleaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    version: str
    model_counter: int
    """Grows with every release of the model; devices refuse anything not newer than what they run."""
    targets_version: int
    """The TUF targets metadata version that first carried this release."""
    compile_job_id: str
    targets: list[ReleaseTarget]
    created_at: datetime
    created_by: str
    """Id of the token that created it."""


class ReleasePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ReleaseInfo]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class CompileOutput:
    """Where a succeeded compile job left its artifacts: `<out_dir>/<profile>/manifest.json` each."""

    job_id: str
    out_dir: Path


@dataclass(frozen=True, slots=True)
class DeviceScope:
    """What a device credential may download: archives of the releases its desired state assigns
    to it, built for a profile of its fallback chain."""

    profile: str
    assigned: frozenset[tuple[str, str]]
    """(model, version) of every release in the device's current desired state."""


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """An artifact archive on the control plane's disk, as the HTTP object route serves it."""

    path: Path
    size_bytes: int
