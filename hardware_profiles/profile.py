"""The hardware profile: how to build, check and run a model on one class of hardware.

A profile is a config file (`profiles/<name>.toml`), decoded into the frozen Structs below. It names
the runtime and its device or execution providers, the precision and quantization recipe, the ordered
compile passes, the validation tolerances against the FP32 reference, the on-device latency budget,
the fallback profile and the rules that tell whether a host can use it.

Invariants:
- Every Struct forbids unknown fields, so a typo in a profile fails loudly instead of being ignored.
- Numbers carry their unit in their name and are range-checked (fractions in [0, 1], budgets > 0).
- A decoded profile is consistent (`HardwareProfile.__post_init__`): the artifact format and the
  quantization methods fit the runtime, `precision` is int8 exactly when a quantization method is set,
  the compile passes contain exactly the quantize pass of that method, and the detection rules
  require the device or providers that execution uses. Violations raise `InconsistentProfileError`.
- OpenVINO profiles must pin `inference_precision_hint`: left alone, OpenVINO picks bf16 on CPUs
  that have it, which was slower and changed predictions.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from hardware_profiles.errors import InconsistentProfileError
from protocols.identifiers import ProfileName
from protocols.manifest import Runtime
from protocols.messages import ArtifactFormat

Precision = Literal["fp32", "fp16", "int8"]
OpenVinoDevice = Literal["CPU", "GPU", "NPU"]
OpenVinoPrecisionHint = Literal["f32", "f16", "bf16"]
QuantizationMethod = Literal[
    "none", "static-qdq", "dynamic", "nncf-int8", "tflite-full-int8", "tflite-dynamic-range"
]
CompilePass = Literal[
    "ort-graph-optimize",
    "convert-fp16",
    "quantize-static-qdq",
    "quantize-dynamic",
    "openvino-convert",
    "openvino-compress-fp16",
    "nncf-quantize",
    "fix-static-shapes",
    "onnx2tf-convert",
    "tflite-quantize",
]

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]
Architecture = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]+$", description="platform.machine(), lower")]
ModuleName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]

QUANTIZE_PASS: dict[QuantizationMethod, CompilePass | None] = {
    "none": None,
    "static-qdq": "quantize-static-qdq",
    "dynamic": "quantize-dynamic",
    "nncf-int8": "nncf-quantize",
    "tflite-full-int8": "tflite-quantize",
    "tflite-dynamic-range": "tflite-quantize",
}
"""The compile pass that applies each quantization method (swap it to apply the conservative recipe)."""

_ARTIFACT_FORMATS: dict[Runtime, frozenset[ArtifactFormat]] = {
    "onnxruntime": frozenset({"onnx"}),
    "openvino": frozenset({"openvino-ir", "onnx"}),
    "tflite": frozenset({"tflite"}),
}
_QUANTIZATION_METHODS: dict[Runtime, frozenset[QuantizationMethod]] = {
    "onnxruntime": frozenset({"none", "static-qdq", "dynamic"}),
    "openvino": frozenset({"none", "nncf-int8"}),
    "tflite": frozenset({"none", "tflite-full-int8", "tflite-dynamic-range"}),
}


class ConfigStruct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every profile table: frozen, keyword-only, unknown fields rejected."""


class OnnxRuntimeExecution(ConfigStruct, tag="onnxruntime", tag_field="runtime", frozen=True, kw_only=True):
    """ONNX Runtime with these execution providers, most preferred first (unavailable ones skipped)."""

    runtime: ClassVar[Runtime] = "onnxruntime"
    providers: Annotated[tuple[NonEmptyText, ...], msgspec.Meta(min_length=1)]


class OpenVinoExecution(ConfigStruct, tag="openvino", tag_field="runtime", frozen=True, kw_only=True):
    """OpenVINO on one device, with the inference precision pinned (never the device default)."""

    runtime: ClassVar[Runtime] = "openvino"
    device: OpenVinoDevice
    inference_precision_hint: OpenVinoPrecisionHint
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"


class TfliteExecution(ConfigStruct, tag="tflite", tag_field="runtime", frozen=True, kw_only=True):
    """LiteRT (`ai_edge_litert.interpreter.Interpreter`, not tflite-runtime) on the CPU."""

    runtime: ClassVar[Runtime] = "tflite"


Execution = OnnxRuntimeExecution | OpenVinoExecution | TfliteExecution


class QuantizationRecipe(ConfigStruct, frozen=True, kw_only=True):
    """How to quantize: the method and the knobs that decide accuracy.

    `op_types` empty means the method's own default set; for ORT dynamic quantization name
    ["MatMul", "Gemm"], because its default turns Conv into the much slower ConvInteger.
    `keep_head_fp` leaves the final classifier/head layers in float (NNCF `ignored_scope`, ORT
    `nodes_to_exclude`). `reduce_range` uses 7-bit weights for x86 CPUs without VNNI.
    """

    method: QuantizationMethod
    per_channel: bool = True
    keep_head_fp: bool = False
    reduce_range: bool = False
    op_types: tuple[NonEmptyText, ...] = ()
    calibration_samples: Annotated[int, msgspec.Meta(ge=1)] = 300


class CompileSpec(ConfigStruct, frozen=True, kw_only=True):
    """What the compiler does for this profile, in order, and what it emits.

    `conservative_quantization` is the recipe retried when the artifact built with `quantization`
    fails the validation gate; None means there is no second try.
    """

    passes: tuple[CompilePass, ...]
    artifact_format: ArtifactFormat
    quantization: QuantizationRecipe
    conservative_quantization: QuantizationRecipe | None = None


class ValidationTolerances(ConfigStruct, frozen=True, kw_only=True):
    """How far an artifact may drift from the FP32 reference and still ship.

    Fractions are in [0, 1]: `max_accuracy_drop` = 0.01 allows one percentage point.
    `max_relative_error` is the largest |reference - artifact| over the validation outputs divided by
    the largest |reference| (so it does not depend on the model's output scale).
    """

    min_top1_agreement: Fraction
    min_cosine_similarity: Fraction
    max_relative_error: Fraction
    max_accuracy_drop: Fraction


class LatencyBudget(ConfigStruct, frozen=True, kw_only=True):
    """The on-device acceptance test: p95 over `measured_runs` runs after `warmup_runs`."""

    p95_latency_ms: Annotated[float, msgspec.Meta(gt=0.0)]
    warmup_runs: Annotated[int, msgspec.Meta(ge=0)] = 5
    measured_runs: Annotated[int, msgspec.Meta(ge=1)] = 50


class DetectionRules(ConfigStruct, frozen=True, kw_only=True):
    """What a host must show for this profile to be usable, and what makes it a better fit.

    All `required_*` rules must hold. `preferred_cpu_flags` never reject a host; present ones are
    reported as evidence (e.g. avx512_vnni makes INT8 fast).
    """

    architectures: Annotated[tuple[Architecture, ...], msgspec.Meta(min_length=1)]
    required_ort_providers: tuple[NonEmptyText, ...] = ()
    required_openvino_device: OpenVinoDevice | None = None
    required_python_modules: tuple[ModuleName, ...] = ()
    preferred_cpu_flags: tuple[NonEmptyText, ...] = ()


class HardwareProfile(ConfigStruct, frozen=True, kw_only=True):
    """One hardware profile, as decoded from `profiles/<name>.toml` (see module invariants).

    `preference_rank`: lower is preferred when several profiles are usable on a host; accelerators
    rank before CPUs. `fallback`: the profile whose artifact to try when this one fails on-device.
    """

    name: ProfileName
    description: NonEmptyText
    precision: Precision
    preference_rank: Annotated[int, msgspec.Meta(ge=0)]
    fallback: ProfileName | None = None
    execution: Execution
    compile: CompileSpec
    validation: ValidationTolerances
    latency: LatencyBudget
    detect: DetectionRules

    @property
    def runtime(self) -> Runtime:
        """The runtime that executes this profile's artifacts."""
        return self.execution.runtime

    def __post_init__(self) -> None:
        if self.fallback == self.name:
            raise InconsistentProfileError("fallback", "a profile cannot fall back to itself")
        self._check_runtime_fit()
        self._check_precision_and_passes()
        self._check_detection_covers_execution()

    def _check_runtime_fit(self) -> None:
        formats = _ARTIFACT_FORMATS[self.runtime]
        if self.compile.artifact_format not in formats:
            raise InconsistentProfileError(
                "compile.artifact_format",
                f"{self.compile.artifact_format!r} is not one of {sorted(formats)} for {self.runtime}",
            )
        methods = _QUANTIZATION_METHODS[self.runtime]
        recipes = {
            "compile.quantization": self.compile.quantization,
            "compile.conservative_quantization": self.compile.conservative_quantization,
        }
        for field, recipe in recipes.items():
            if recipe is not None and recipe.method not in methods:
                raise InconsistentProfileError(
                    f"{field}.method", f"{recipe.method!r} is not one of {sorted(methods)} for {self.runtime}"
                )

    def _check_precision_and_passes(self) -> None:
        method = self.compile.quantization.method
        if (self.precision == "int8") != (method != "none"):
            raise InconsistentProfileError(
                "precision", f"{self.precision!r} does not fit quantization method {method!r}"
            )
        if len(set(self.compile.passes)) != len(self.compile.passes):
            raise InconsistentProfileError("compile.passes", "a pass is listed twice")
        quantize_passes = {p for p in self.compile.passes if p in QUANTIZE_PASS.values()}
        expected = {p for p in (QUANTIZE_PASS[method],) if p is not None}
        if quantize_passes != expected:
            raise InconsistentProfileError(
                "compile.passes",
                f"quantization method {method!r} needs quantize passes {sorted(expected)}, "
                f"found {sorted(quantize_passes)}",
            )

    def _check_detection_covers_execution(self) -> None:
        execution = self.execution
        if (
            isinstance(execution, OpenVinoExecution)
            and self.detect.required_openvino_device != execution.device
        ):
            raise InconsistentProfileError(
                "detect.required_openvino_device", f"must be {execution.device!r}, the device execution uses"
            )
        if isinstance(execution, OnnxRuntimeExecution):
            unused = set(self.detect.required_ort_providers) - set(execution.providers)
            if unused:
                raise InconsistentProfileError(
                    "detect.required_ort_providers", f"{sorted(unused)} not in execution.providers"
                )
