"""Compiling one ONNX model for several hardware profiles, each build proven before it ships.

For every requested profile: run its passes with its quantization recipe, load the result in the
profile's runtime (or its nearest CPU equivalent when the hardware is absent), compare it with the
FP32 reference on held-out samples, and write the artifact only if it passes the profile's
tolerances. A failing quantized build is retried with the profile's conservative recipe.

Invariants:
- A failure in one profile never hides the others: each ends `built`, `rejected` (failed the gate,
  with its numbers) or `failed` (could not be built or run, with the reason).
- Only `built` profiles have a directory under `out_dir`, and it is complete (see `artifact`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import onnx
from numpy.typing import NDArray

from hardware_profiles.loader import load_profile
from hardware_profiles.profile import QUANTIZE_PASS, HardwareProfile, QuantizationMethod, QuantizationRecipe
from hardware_profiles.runtimes import ExecutionSettings, InferenceSession, open_session, settings_for
from model_compiler.artifact import emit_model, file_entry, publish_directory, write_manifest
from model_compiler.datasets import Samples, load_samples
from model_compiler.errors import DatasetError, UnsupportedOperatorError
from model_compiler.golden import write_golden
from model_compiler.inspection import ModelInfo, inspect_model, with_node_names
from model_compiler.latency import measure_latency
from model_compiler.passes import Build, PassContext, run_passes, with_recipe
from model_compiler.validation import Comparison, compare, gate, reference_histogram
from protocols.errors import FabricError
from protocols.manifest import (
    AcceptanceSpec,
    ArtifactManifest,
    LatencyStats,
    ValidationMetrics,
)

ProfileStatus = Literal["built", "rejected", "failed"]
ProgressCallback = Callable[[str, str], None]
GOLDEN_SAMPLES = 8


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One recipe tried for one profile."""

    recipe: str
    quantization: str
    metrics: ValidationMetrics | None = None
    host_latency: LatencyStats | None = None
    reasons: tuple[str, ...] = ()


class ProfileResult(msgspec.Struct, frozen=True, kw_only=True):
    profile: str
    status: ProfileStatus
    reason: str | None = None
    artifact_dir: str | None = None
    attempts: tuple[Attempt, ...] = ()
    manifest: ArtifactManifest | None = None


class CompileReport(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    version: str
    source_sha256: str
    results: tuple[ProfileResult, ...]

    @property
    def is_success(self) -> bool:
        return all(r.status == "built" for r in self.results)


@dataclass(frozen=True, slots=True)
class CompileRequest:
    model_path: Path
    profiles: tuple[str, ...]
    out_dir: Path
    model_name: str
    version: str
    calibration_path: Path | None = None
    validation_path: Path | None = None
    quantization: QuantizationMethod | None = None  # override for onnxruntime profiles
    holdout_fraction: float = 0.2


def _package_versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _run_all(session: InferenceSession, samples: Samples) -> NDArray[Any]:
    """First output of the model for every sample, batch 1 (what devices run)."""
    first = session.outputs[0].name
    return np.concatenate([session.run(batch)[first] for batch in samples.batches(1)])


def _recipes(
    profile: HardwareProfile, info: ModelInfo, override: QuantizationMethod | None
) -> list[tuple[str, QuantizationRecipe]]:
    """Recipes to try in order: the profile's (or the flag's) method, then its conservative one.

    For onnxruntime, a transformer-like graph gets dynamic MatMul/Gemm quantization instead of
    static QDQ (which lost 4.5 points on a BERT-shaped encoder) unless the flag says otherwise.
    """
    spec = profile.compile
    method = override
    if method is None and info.is_transformer_like and spec.quantization.method == "static-qdq":
        method = "dynamic"
    if profile.runtime != "onnxruntime" or spec.quantization.method == "none":
        method = None
    recipes = [("default", replace_recipe(spec.quantization, method) if method else spec.quantization)]
    if spec.conservative_quantization is not None and spec.quantization.method != "none":
        conservative = spec.conservative_quantization
        recipes.append(("conservative", replace_recipe(conservative, method) if method else conservative))
    return recipes


def replace_recipe(recipe: QuantizationRecipe, method: QuantizationMethod) -> QuantizationRecipe:
    """The same recipe with another method (dynamic is restricted to MatMul/Gemm by its pass)."""
    return msgspec.structs.replace(
        recipe, method=method, op_types=() if method != recipe.method else recipe.op_types
    )


def _passes_for(profile: HardwareProfile, recipe: QuantizationRecipe) -> tuple[Any, ...]:
    """The profile's passes with the quantize pass swapped to the recipe's method."""
    wanted = QUANTIZE_PASS[recipe.method]
    quantize_passes = {p for p in QUANTIZE_PASS.values() if p is not None}
    swapped = [wanted if p in quantize_passes else p for p in profile.compile.passes]
    return tuple(p for p in swapped if p is not None)


class _Compilation:
    """State shared by every profile of one compile run."""

    def __init__(self, request: CompileRequest, on_progress: ProgressCallback) -> None:
        self.request = request
        self.progress = on_progress
        self.info: ModelInfo = inspect_model(request.model_path)
        self._scratch = tempfile.TemporaryDirectory(prefix="edgefabric-compile-")
        self.source = Path(self._scratch.name) / "source.onnx"
        onnx.save(with_node_names(onnx.load(str(request.model_path))), str(self.source))
        self.calibration, self.validation = self._samples()
        reference = open_session(request.model_path, ExecutionSettings(runtime="onnxruntime"))
        self.reference_outputs = _run_all(reference, self.validation)
        self.compiler_versions = _package_versions(("edgefabric", "onnx", "onnxruntime", "openvino", "nncf"))

    def close(self) -> None:
        self._scratch.cleanup()

    def _samples(self) -> tuple[Samples, Samples]:
        req = self.request
        calibration = load_samples(req.calibration_path, self.info.inputs) if req.calibration_path else None
        validation = load_samples(req.validation_path, self.info.inputs) if req.validation_path else None
        if validation is None and calibration is None:
            raise DatasetError(req.model_path, "compiling needs --calibration or --validation samples")
        if validation is None:
            assert calibration is not None
            calibration, validation = calibration.split(req.holdout_fraction)
        return (calibration or validation), validation

    def compile_profile(self, name: str) -> ProfileResult:
        attempts: list[Attempt] = []
        try:
            profile = load_profile(name)
            foreign = self.info.non_standard_operators
            if foreign and profile.runtime != "onnxruntime":
                raise UnsupportedOperatorError(name, foreign[0])
            for tag, recipe in _recipes(profile, self.info, self.request.quantization):
                attempt, manifest = self._attempt(profile, tag, recipe)
                attempts.append(attempt)
                if manifest is not None:
                    self.progress(name, "built")
                    return ProfileResult(
                        profile=name,
                        status="built",
                        artifact_dir=str(self.request.out_dir / name),
                        attempts=tuple(attempts),
                        manifest=manifest,
                    )
            self.progress(name, "rejected")
            return ProfileResult(
                profile=name,
                status="rejected",
                reason="; ".join(attempts[-1].reasons),
                attempts=tuple(attempts),
            )
        except FabricError as e:
            self.progress(name, "failed")
            return ProfileResult(profile=name, status="failed", reason=str(e), attempts=tuple(attempts))

    def _attempt(
        self, profile: HardwareProfile, tag: str, recipe: QuantizationRecipe
    ) -> tuple[Attempt, ArtifactManifest | None]:
        name = profile.name
        self.request.out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=self.request.out_dir) as scratch:
            work, staging = Path(scratch) / "work", Path(scratch) / "artifact"
            work.mkdir()
            self.progress(name, f"running passes ({tag} recipe: {recipe.method})")
            context = PassContext(
                profile=profile, recipe=recipe, model=self.info, calibration=self.calibration, work_dir=work
            )
            build = run_passes(
                _passes_for(profile, recipe),
                Build(onnx_path=self.source),
                with_recipe(context, recipe, tag),
            )
            model_file, files = emit_model(build, staging)
            settings = dataclasses.replace(
                settings_for(profile), input_permutations=tuple(build.input_permutations.items())
            )
            self.progress(name, "validating")
            session = open_session(staging / model_file, settings, allow_cpu_equivalent=True)
            outputs = _run_all(session, self.validation)
            comparison = compare(self.reference_outputs, outputs, self.validation.labels)
            metrics = _metrics(comparison, session, profile)
            reasons = gate(comparison, profile.validation)
            if reasons:
                return Attempt(
                    recipe=tag, quantization=recipe.method, metrics=metrics, reasons=tuple(reasons)
                ), None
            self.progress(name, "benchmarking")
            golden = self.validation.take(slice(0, GOLDEN_SAMPLES))
            first = next(golden.batches(1))
            latency = measure_latency(
                session, first, warmup_runs=profile.latency.warmup_runs, runs=profile.latency.measured_runs
            )
            golden_outputs = {
                spec.name: np.concatenate([session.run(b)[spec.name] for b in golden.batches(1)])
                for spec in session.outputs
            }
            write_golden(staging, golden.inputs, golden_outputs)
            manifest = self._manifest(
                profile,
                tag,
                recipe,
                session,
                settings,
                staging,
                model_file,
                [*files, "golden.npz"],
                metrics,
                latency,
            )
            write_manifest(staging, manifest)
            publish_directory(staging, self.request.out_dir / name)
            return Attempt(
                recipe=tag, quantization=recipe.method, metrics=metrics, host_latency=latency
            ), manifest

    def _manifest(
        self,
        profile: HardwareProfile,
        tag: str,
        recipe: QuantizationRecipe,
        session: InferenceSession,
        settings: ExecutionSettings,
        staging: Path,
        model_file: str,
        files: list[str],
        metrics: ValidationMetrics,
        latency: LatencyStats,
    ) -> ArtifactManifest:
        runtime_package = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert"}
        return ArtifactManifest(
            model=self.request.model_name,
            version=self.request.version,
            hw_profile=profile.name,
            runtime=profile.runtime,
            artifact_format=profile.compile.artifact_format,
            precision=profile.precision if recipe.method != "none" or profile.precision != "int8" else "fp32",
            recipe=f"{tag}: {recipe.method}" + (" (head kept in float)" if recipe.keep_head_fp else ""),
            model_file=model_file,
            files=tuple(file_entry(staging, f) for f in files),
            inputs=session.inputs,
            outputs=session.outputs,
            validation=metrics,
            host_latency=latency,
            acceptance=AcceptanceSpec(
                golden_file="golden.npz",
                max_abs_error=_acceptance_tolerance(self.reference_outputs, profile),
                min_top1_agreement=profile.validation.min_top1_agreement,
                p95_latency_ms=profile.latency.p95_latency_ms,
            ),
            reference_histogram=reference_histogram(self.reference_outputs),
            source_model_sha256=self.info.sha256,
            compiler_versions=self.compiler_versions,
            runtime_versions=_package_versions((runtime_package[profile.runtime],)),
            providers=settings.providers,
            device=settings.device,
            inference_precision_hint=settings.inference_precision_hint,
            input_permutations=dict(settings.input_permutations),
        )


def _acceptance_tolerance(reference: NDArray[Any], profile: HardwareProfile) -> float:
    """The absolute output tolerance for the device's golden test, from the relative one."""
    return float(np.abs(reference).max()) * profile.validation.max_relative_error


def _metrics(
    comparison: Comparison, session: InferenceSession, profile: HardwareProfile
) -> ValidationMetrics:
    where = session.description
    if session.is_cpu_equivalent:
        where += f" (CPU equivalent: {profile.name} hardware absent on the compiling host)"
    return ValidationMetrics(
        samples=comparison.samples,
        top1_agreement=comparison.top1_agreement,
        max_abs_error=comparison.max_abs_error,
        max_relative_error=comparison.max_relative_error,
        cosine_similarity=comparison.cosine_similarity,
        accuracy=comparison.accuracy,
        reference_accuracy=comparison.reference_accuracy,
        validated_on=where,
        is_cpu_equivalent=session.is_cpu_equivalent,
    )


def compile_model(request: CompileRequest, on_progress: ProgressCallback | None = None) -> CompileReport:
    """Compile `request.model_path` for every requested profile (see module invariants).

    Raises only for problems that stop every profile (unusable model or samples).
    """
    compilation = _Compilation(request, on_progress or (lambda profile, stage: None))
    try:
        results = tuple(compilation.compile_profile(name) for name in request.profiles)
    finally:
        compilation.close()
    return CompileReport(
        model=request.model_name,
        version=request.version,
        source_sha256=compilation.info.sha256,
        results=results,
    )
