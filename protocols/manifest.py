"""The artifact manifest: what the compiler proved about one build, and what the agent checks.

One manifest per compiled artifact (one hardware profile), written as `manifest.json` next to
the model files in the artifact directory. The agent reads it after verification (TUF) to load
the model in the right runtime and to run its acceptance test, so it lives in `protocols/`.

Invariants:
- Every file the artifact needs is listed in `files` with its SHA-256 and length, by a relative
  POSIX path without `..`; `model_file` and `golden_file` are entries of `files`.
- Golden inputs/outputs are an `.npz` read with `allow_pickle=False` (no pickle anywhere).
- `validation.validated_on` names the runtime and device that produced the metrics; when the
  profile's hardware was absent, `validation.is_cpu_equivalent` is true.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocols.codec import Decoder
from protocols.identifiers import (
    ModelName,
    NonNegative,
    Positive,
    ProfileName,
    Sha256Hex,
    UtcDatetime,
    Version,
)
from protocols.messages import ArtifactFormat, WireStruct, utc_now

MANIFEST_FILENAME = "manifest.json"

_RELATIVE_PATH = r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9._/-]{1,200}\Z"  # no leading /, no `..` part
RelativePath = Annotated[str, msgspec.Meta(pattern=_RELATIVE_PATH, description="relative POSIX path")]
Runtime = Literal["onnxruntime", "openvino", "tflite"]


class TensorSpec(WireStruct, frozen=True, kw_only=True):
    """One model input or output; `None` in `shape` is a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


class ArtifactFile(WireStruct, frozen=True, kw_only=True):
    path: RelativePath
    sha256: Sha256Hex
    size_bytes: NonNegative


class ValidationMetrics(WireStruct, frozen=True, kw_only=True):
    """The artifact against the FP32 reference on held-out samples."""

    samples: Positive
    top1_agreement: float
    max_abs_error: float
    max_relative_error: float = 0.0
    cosine_similarity: float
    accuracy: float | None = None
    reference_accuracy: float | None = None
    validated_on: str
    is_cpu_equivalent: bool = False


class LatencyStats(WireStruct, frozen=True, kw_only=True):
    p50_ms: float
    p95_ms: float
    runs: Positive
    measured_on: str


class AcceptanceSpec(WireStruct, frozen=True, kw_only=True):
    """What the device checks before switching to this artifact: its outputs on the golden inputs
    within `max_abs_error` of the golden outputs (absolute, in output units), p95 within budget."""

    golden_file: RelativePath
    max_abs_error: float
    min_top1_agreement: float
    p95_latency_ms: float


class OutputHistogram(WireStruct, frozen=True, kw_only=True):
    """Reference distribution of the model's outputs, for drift (PSI) on devices.

    `kind="top1"`: `counts[i]` = how often class i was the top-1 output (`bin_edges` empty).
    `kind="bins"`: counts of the first output's values in `bin_edges` intervals.
    """

    kind: Literal["top1", "bins"]
    counts: tuple[NonNegative, ...]
    bin_edges: tuple[float, ...] = ()


class ArtifactManifest(WireStruct, frozen=True, kw_only=True):
    """Everything about one artifact; `providers`/`device`/`inference_precision_hint` tell the
    agent's runtime how to load it (ORT execution providers, OpenVINO device and precision), and
    `input_permutations` how to transpose feeds given in the source model's layout."""

    schema_version: int = 1
    model: ModelName
    version: Version
    hw_profile: ProfileName
    runtime: Runtime
    artifact_format: ArtifactFormat
    precision: str
    recipe: str
    model_file: RelativePath
    files: tuple[ArtifactFile, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    validation: ValidationMetrics
    host_latency: LatencyStats
    acceptance: AcceptanceSpec
    reference_histogram: OutputHistogram
    source_model_sha256: Sha256Hex
    compiler_versions: dict[str, str] = msgspec.field(default_factory=dict)
    runtime_versions: dict[str, str] = msgspec.field(default_factory=dict)
    providers: tuple[str, ...] = ()
    device: str | None = None
    inference_precision_hint: str | None = None
    input_permutations: dict[str, tuple[int, ...]] = msgspec.field(default_factory=dict)
    created_at: UtcDatetime = msgspec.field(default_factory=utc_now)

    def file(self, path: str) -> ArtifactFile | None:
        return next((f for f in self.files if f.path == path), None)


manifest_decoder: Decoder[ArtifactManifest] = Decoder("artifact manifest", ArtifactManifest)
