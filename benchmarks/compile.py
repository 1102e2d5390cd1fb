"""Compiler benchmark: INT8/FP16 artifacts of a ResNet-18- and a BERT-shaped model, speed and accuracy.

For each model (`compile_models.py`; both trained on scikit-learn's bundled digits, head only):

1. Build the FP32 ONNX and write it with its calibration and labelled validation `.npz`.
2. `compile_model` for `--profiles` (default cpu-x86_64, intel-cpu-openvino, nvidia-gpu, intel-gpu:
   each with its own recipe and, on a failed gate, its conservative retry), then once more for
   cpu-x86_64 with the other ORT recipe forced (`quantization="dynamic"` for the CNN,
   `"static-qdq"` for the encoder), so that every recipe is visible.
3. Unless `--no-x64-check`: rebuild the cpu-x86_64 artifact with the compiler's own passes and run
   it with ORT's `session.x64quantprecision=1` (`compile_x64.py`), gated with the profile's tolerances
   -- a diagnostic for CPUs without VNNI, marked as such and never counted towards the targets.
4. Time every built artifact at batch 1 in the runtime and settings its manifest prescribes
   (`open_session(..., allow_cpu_equivalent=True)`: the GPU profiles run on the CPU here), together
   with the baseline -- ORT FP32 of the source model (ORT_ENABLE_ALL) -- in the same process
   (`compile_timing.py`): wall clock with `--threads` per runtime, each variant in its own block
   (`--warmup` untimed runs, then up to `--runs` timed runs or `--block-max-s`) after a `--pause-s`
   pause, in `--rounds` rounds whose order alternates; then the process CPU time per call of a
   one-thread session (`--cpu-runs`), which other load on the machine does not inflate.
   The headline ratio is the baseline's median over the artifact's median (wall clock).
5. Report per artifact: status, recipe, accuracy, accuracy drop and top-1 agreement against FP32 (the
   compiler's own validation on the held-out set), latency p50/p10/p90, the ratios (median, best
   block, one-thread CPU time); and every attempt the gate rejected with its reasons.

Targets (issue "model compiler", 2 cores): the best CPU INT8 artifact of the CNN >= 3x faster than
ORT FP32 with <= 1 point top-1 accuracy drop; the encoder >= 2x with <= 1 point drop. The research
note (compiler_anchors.md 2a/2b) measured, on a 2-vCPU AVX512-VNNI Xeon: ResNet-18 ORT static QDQ
2.97x, NNCF->QDQ 3.14x, OpenVINO INT8 2.77x; BERT-base ORT dynamic 2.29x (-1.0 pt), OpenVINO INT8
with the head excluded 3.27x.

Every loop is bounded by a count and by time (`--block-max-s` per block, `--budget-s` for the run:
once it is spent, no new compile or timing block starts and the report says so).

Exit codes: 0 done (whether or not the targets were met: see the report); 2 bad usage (argparse);
3 a model could not be built or compiled at all.

Usage: `python benchmarks/compile.py [--models resnet bert] [--image-size 112] [--bert-layers 4]
[--rounds 6] [--runs 15] [--json-out benchmarks/results/compile.json]` (see `--help`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from compile_models import BertShape, bert_digits, resnet18_digits
from compile_timing import CpuCost, Latency, Runnable, TimingPlan, cost, cpu_cost, latency, time_blocks
from compile_x64 import PRECISION_OPTION, OrtOptionSession, X64Check, check_x64_precision

from hardware_profiles.profile import QuantizationMethod
from hardware_profiles.runtimes import ExecutionSettings, open_session
from model_compiler.compiler import CompileReport, CompileRequest, ProfileResult, compile_model
from model_compiler.sample_models import SampleModel, SavedSample
from protocols.cli_support import render_table
from protocols.errors import FabricError
from protocols.manifest import ArtifactManifest

EXIT_OK, EXIT_FAILED = 0, 3
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "compile.json"
DEFAULT_PROFILES = ("cpu-x86_64", "intel-cpu-openvino", "nvidia-gpu", "intel-gpu")
CPU_INT8_PROFILES = ("cpu-x86_64", "intel-cpu-openvino")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
BASELINE = "ORT FP32 (source model)"
PROFILE_RECIPE = "profile recipe"
X64_PROFILE = "cpu-x86_64"
X64_REQUEST = f"diagnostic: {PRECISION_OPTION}"
Event = tuple[float, str, str, str]  # (s since the model's compiles started, run label, profile, stage)


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    cpu_model: str
    usable_cpus: int
    cpu_flags: list[str]
    platform: str
    python: str
    versions: dict[str, str]
    load_average_start: list[float]
    load_average_end: list[float]


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    recipe: str
    quantization: str
    passed: bool
    top1_agreement: float | None
    accuracy: float | None
    reference_accuracy: float | None
    accuracy_drop_pt: float | None
    cosine_similarity: float | None
    max_relative_error: float | None
    reasons: list[str]


class ArtifactRow(msgspec.Struct, frozen=True, kw_only=True):
    profile: str
    request: str  # "profile recipe" or "forced <method>"
    status: str
    reason: str | None
    recipe: str | None  # the manifest's recipe of the built artifact
    precision: str | None
    runtime: str | None
    validated_on: str | None
    size_mb: float | None
    compile_s: float | None
    compiler_host_p50_ms: float | None  # the compiler's own latency probe (default threads)
    attempts: list[AttemptRow]
    is_compiler_output: bool = True  # False for the x64quantprecision diagnostic
    latency: Latency | None = None  # wall clock, --threads
    cpu: CpuCost | None = None  # process CPU time, one thread


class TargetCheck(msgspec.Struct, frozen=True, kw_only=True):
    min_speedup: float
    max_drop_pt: float
    best: str | None
    best_speedup: float | None
    best_drop_pt: float | None
    met: bool
    note: str


class ModelReport(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    parameters: int
    size_mb: float
    reference_accuracy: float
    calibration_samples: int
    validation_samples: int
    build_s: float
    compile_s: float
    baseline: Latency | None
    baseline_cpu: CpuCost | None
    artifacts: list[ArtifactRow]
    target: TargetCheck
    events: list[Event]


class Report(msgspec.Struct, frozen=True, kw_only=True):
    benchmark: str
    date: str
    command: str
    machine: Machine
    settings: dict[str, str]
    models: list[ModelReport]
    total_s: float
    budget_exhausted: bool


class Budget:
    """A wall-clock budget for the whole run; no new compile or timing block starts once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.exhausted = False

    def allows(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.exhausted = True
        return not self.exhausted


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[], SampleModel]
    default_method: QuantizationMethod  # what the cpu-x86_64 profile picks for this graph
    forced: QuantizationMethod  # the ORT recipe the cpu-x86_64 profile would not pick on its own
    target_speedup: float


def machine_info(start_load: list[float]) -> Machine:
    cpu_model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model == "unknown":
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for package in ("onnx", "onnxruntime", "openvino", "nncf", "numpy", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return Machine(
        cpu_model=cpu_model,
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
        cpu_flags=[f for f in CPU_FLAGS if f in flags],
        platform=platform.platform(),
        python=platform.python_version(),
        versions=versions,
        load_average_start=start_load,
        load_average_end=[round(x, 2) for x in os.getloadavg()],
    )


# --- sessions ------------------------------------------------------------------------------------


def settings_from(manifest: ArtifactManifest, threads: int) -> ExecutionSettings:
    return ExecutionSettings(
        runtime=manifest.runtime,
        providers=manifest.providers,
        device=manifest.device,
        inference_precision_hint=manifest.inference_precision_hint,
        threads=threads,
        input_permutations=tuple(manifest.input_permutations.items()),
    )


# --- one model -----------------------------------------------------------------------------------


def attempt_rows(result: ProfileResult) -> list[AttemptRow]:
    rows = []
    for attempt in result.attempts:
        m = attempt.metrics
        drop = None
        if m is not None and m.accuracy is not None and m.reference_accuracy is not None:
            drop = round((m.reference_accuracy - m.accuracy) * 100, 2)
        rows.append(
            AttemptRow(
                recipe=attempt.recipe,
                quantization=attempt.quantization,
                passed=not attempt.reasons,
                top1_agreement=m.top1_agreement if m else None,
                accuracy=m.accuracy if m else None,
                reference_accuracy=m.reference_accuracy if m else None,
                accuracy_drop_pt=drop,
                cosine_similarity=m.cosine_similarity if m else None,
                max_relative_error=m.max_relative_error if m else None,
                reasons=list(attempt.reasons),
            )
        )
    return rows


def profile_seconds(events: list[Event], run: str, profile: str) -> float | None:
    """From this profile's first progress event in `run` to its last (passes, gate and latency probe)."""
    times = [t for t, r, p, _ in events if r == run and p == profile]
    return round(times[-1] - times[0], 1) if times else None


def artifact_row(result: ProfileResult, request: str, events: list[Event]) -> ArtifactRow:
    manifest = result.manifest
    size_mb = None
    if manifest is not None:
        size_mb = round(sum(f.size_bytes for f in manifest.files if f.path != "golden.npz") / 1e6, 1)
    return ArtifactRow(
        profile=result.profile,
        request=request,
        status=result.status,
        reason=result.reason,
        recipe=manifest.recipe if manifest else None,
        precision=manifest.precision if manifest else None,
        runtime=manifest.runtime if manifest else None,
        validated_on=manifest.validation.validated_on if manifest else None,
        size_mb=size_mb,
        compile_s=profile_seconds(events, request, result.profile),
        compiler_host_p50_ms=round(manifest.host_latency.p50_ms, 3) if manifest else None,
        attempts=attempt_rows(result),
    )


def run_compiles(
    spec: ModelSpec, saved: SavedSample, work: Path, args: argparse.Namespace, budget: Budget
) -> tuple[list[tuple[ProfileResult, str]], list[Event], float]:
    """Every profile's compile, then the forced recipe; returns (result, run label)s, events, wall time."""
    started = time.monotonic()
    events: list[Event] = []
    label = ""

    def progress(profile: str, stage: str) -> None:
        events.append((round(time.monotonic() - started, 2), label, profile, stage))
        print(f"  [{time.monotonic() - started:7.1f} s] {profile}: {stage}", flush=True)

    runs: list[tuple[tuple[str, ...], QuantizationMethod | None, str]] = [
        (tuple(args.profiles), None, PROFILE_RECIPE)
    ]
    if not args.skip_forced and X64_PROFILE in args.profiles:
        runs.append(((X64_PROFILE,), spec.forced, f"forced {spec.forced}"))
    results: list[tuple[ProfileResult, str]] = []
    for index, (profiles, forced, run_label) in enumerate(runs):
        if not budget.allows():
            break
        label = run_label
        report: CompileReport = compile_model(
            CompileRequest(
                model_path=saved.model_path,
                profiles=profiles,
                out_dir=work / f"artifacts-{index}",
                model_name=spec.name,
                version="1",
                calibration_path=saved.calibration_path,
                validation_path=saved.validation_path,
                quantization=forced,
            ),
            on_progress=progress,
        )
        results += [(r, run_label) for r in report.results]
    return results, events, round(time.monotonic() - started, 1)


def x64_row(check: X64Check, seconds: float) -> ArtifactRow:
    c = check.comparison
    drop = None
    if c.accuracy is not None and c.reference_accuracy is not None:
        drop = round((c.reference_accuracy - c.accuracy) * 100, 2)
    attempt = AttemptRow(
        recipe="default",
        quantization=check.method,
        passed=not check.reasons,
        top1_agreement=c.top1_agreement,
        accuracy=c.accuracy,
        reference_accuracy=c.reference_accuracy,
        accuracy_drop_pt=drop,
        cosine_similarity=c.cosine_similarity,
        max_relative_error=c.max_relative_error,
        reasons=check.reasons,
    )
    return ArtifactRow(
        profile=X64_PROFILE,
        request=X64_REQUEST,
        status="passes gate" if not check.reasons else "fails gate",
        reason="; ".join(check.reasons) or None,
        recipe=f"default: {check.method} + {PRECISION_OPTION}=1",
        precision="int8",
        runtime="onnxruntime",
        validated_on=f"onnxruntime {onnxruntime_version()} CPU, {PRECISION_OPTION}=1",
        size_mb=round(check.artifact.stat().st_size / 1e6, 1),
        compile_s=round(seconds, 1),
        compiler_host_p50_ms=None,
        attempts=[attempt],
        is_compiler_output=False,
    )


def onnxruntime_version() -> str:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return "?"


Opener = Callable[[int], Runnable]  # opens one variant with this many threads


def measure(
    openers: dict[str, Opener], feed: dict[str, np.ndarray], args: argparse.Namespace, budget: Budget
) -> tuple[dict[str, Latency], dict[str, CpuCost]]:
    """Wall clock at --threads (all sessions open, blocks alternating), then one-thread CPU cost."""
    sessions = {key: opener(args.threads) for key, opener in openers.items()}
    plan = TimingPlan(args.rounds, args.runs, args.warmup, args.pause_s, args.block_max_s)
    print(f"  timing {len(sessions)} variants: {args.rounds} rounds x {args.runs} runs", flush=True)
    blocks = time_blocks(sessions, feed, plan, budget.allows)
    del sessions  # stop their thread pools before the one-thread measurement
    baseline = latency(blocks[BASELINE], args.threads, None)
    wall = {key: latency(b, args.threads, baseline) for key, b in blocks.items()}
    cpu_samples: dict[str, list[float]] = {}
    if args.cpu_runs:
        print(f"  CPU cost of {len(openers)} variants, one thread, {args.cpu_runs} runs", flush=True)
    for key, opener in openers.items():
        if not args.cpu_runs or not budget.allows():
            break
        session = opener(1)
        cpu_samples[key] = cpu_cost(
            session, feed, warmup=args.warmup, runs=args.cpu_runs, max_s=args.cpu_max_s
        )
        del session
    baseline_cpu = cost(cpu_samples.get(BASELINE, []), None)
    cpu = {key: cost(samples, baseline_cpu) for key, samples in cpu_samples.items()}
    return (
        {k: v for k, v in wall.items() if v is not None},
        {k: v for k, v in cpu.items() if v is not None},
    )


def bench_model(spec: ModelSpec, work: Path, args: argparse.Namespace, budget: Budget) -> ModelReport:
    print(f"\n== {spec.name}: {spec.description}", flush=True)
    started = time.monotonic()
    sample = spec.build()
    build_s = round(time.monotonic() - started, 1)
    saved = sample.save(work / "source")
    parameters = sum(int(np.prod(t.dims)) for t in sample.model.graph.initializer)
    size_mb = round(saved.model_path.stat().st_size / 1e6, 1)
    print(
        f"  built in {build_s} s: {parameters / 1e6:.1f} M parameters, {size_mb} MB, "
        f"ORT FP32 accuracy {sample.reference_accuracy:.4f}",
        flush=True,
    )
    results, events, compile_s = run_compiles(spec, saved, work, args, budget)
    rows = [artifact_row(r, label, events) for r, label in results]
    openers: dict[str, Opener] = {
        BASELINE: lambda t: open_session(
            saved.model_path, ExecutionSettings(runtime="onnxruntime", threads=t)
        )
    }
    for (result, _), row in zip(results, rows, strict=True):
        if result.manifest is not None and result.artifact_dir is not None:
            openers[_key(row)] = _manifest_opener(result.manifest, Path(result.artifact_dir))
    if args.x64_check and X64_PROFILE in args.profiles and budget.allows():
        print(
            f"  diagnostic: cpu-x86_64 {spec.default_method} artifact with {PRECISION_OPTION}=1", flush=True
        )
        check_started = time.monotonic()
        check = check_x64_precision(
            saved.model_path,
            saved.calibration_path,
            saved.validation_path,
            spec.default_method,
            work / "x64-check",
            args.threads,
        )
        rows.append(x64_row(check, time.monotonic() - check_started))
        openers[_key(rows[-1])] = lambda t: OrtOptionSession(check.artifact, t, {PRECISION_OPTION: "1"})
    feed = {sample.input_name: sample.validation[sample.input_name][:1]}
    wall, cpu = measure(openers, feed, args, budget)
    rows = [msgspec.structs.replace(row, latency=wall.get(_key(row)), cpu=cpu.get(_key(row))) for row in rows]
    return ModelReport(
        name=spec.name,
        description=spec.description,
        parameters=parameters,
        size_mb=size_mb,
        reference_accuracy=sample.reference_accuracy,
        calibration_samples=len(next(iter(sample.calibration.values()))),
        validation_samples=len(sample.validation["labels"]),
        build_s=build_s,
        compile_s=compile_s,
        baseline=wall.get(BASELINE),
        baseline_cpu=cpu.get(BASELINE),
        artifacts=rows,
        target=check_target(rows, spec.target_speedup, args.max_drop_pt),
        events=events,
    )


def _manifest_opener(manifest: ArtifactManifest, directory: Path) -> Opener:
    def opener(threads: int) -> Runnable:
        settings = settings_from(manifest, threads)
        return open_session(directory / manifest.model_file, settings, allow_cpu_equivalent=True)

    return opener


def _key(row: ArtifactRow) -> str:
    return f"{row.profile} [{row.request}]"


def check_target(rows: list[ArtifactRow], min_speedup: float, max_drop_pt: float) -> TargetCheck:
    """The fastest built CPU INT8 artifact within the accuracy-drop limit, against the speed target."""
    candidates = []
    for row in rows:
        if not row.is_compiler_output or row.status != "built" or row.precision != "int8":
            continue
        if row.profile not in CPU_INT8_PROFILES:
            continue
        final = row.attempts[-1]
        if row.latency is None or final.accuracy_drop_pt is None or final.accuracy_drop_pt > max_drop_pt:
            continue
        candidates.append((row.latency.speedup, final.accuracy_drop_pt, _key(row)))
    if not candidates:
        return TargetCheck(
            min_speedup=min_speedup,
            max_drop_pt=max_drop_pt,
            best=None,
            best_speedup=None,
            best_drop_pt=None,
            met=False,
            note="no CPU INT8 artifact passed the gate within the accuracy-drop limit",
        )
    speedup, drop, key = max(candidates)
    met = speedup >= min_speedup
    return TargetCheck(
        min_speedup=min_speedup,
        max_drop_pt=max_drop_pt,
        best=key,
        best_speedup=speedup,
        best_drop_pt=drop,
        met=met,
        note=f"{'met' if met else 'NOT met'}: {speedup:.2f}x (target {min_speedup}x) at {drop:+.2f} pt drop",
    )


# --- output --------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}"


ARTIFACT_HEADERS = (
    "ARTIFACT", "STATUS", "RECIPE", "PREC", "MB", "ACC %", "DROP PT", "AGREE %",
    "P50 MS", "P10", "P90", "x FP32", "x BEST BLK", "CPU MS 1T", "x CPU", "COMPILE S",
)  # fmt: skip
ATTEMPT_HEADERS = ("ARTIFACT", "ATTEMPT", "GATE", "ACC %", "DROP PT", "AGREE %", "COS", "MAX REL", "WHY")


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def artifact_cells(row: ArtifactRow) -> list[object]:
    final = row.attempts[-1] if row.attempts else None
    lat = row.latency
    return [
        _key(row),
        row.status,
        row.recipe or (final.quantization if final else "-"),
        row.precision or "-",
        _num(row.size_mb, ".1f"),
        _pct(final.accuracy) if final else "-",
        _num(final.accuracy_drop_pt) if final else "-",
        _pct(final.top1_agreement) if final else "-",
        _num(lat.p50_ms if lat else None),
        _num(lat.p10_ms if lat else None),
        _num(lat.p90_ms if lat else None),
        _num(lat.speedup if lat else None),
        _num(lat.speedup_best_block if lat else None),
        _num(row.cpu.cpu_ms if row.cpu else None),
        _num(row.cpu.speedup if row.cpu else None),
        _num(row.compile_s, ".1f"),
    ]


def attempt_cells(row: ArtifactRow) -> list[list[object]]:
    cells: list[list[object]] = [
        [
            _key(row),
            f"{a.recipe}: {a.quantization}",
            "pass" if a.passed else "REJECTED",
            _pct(a.accuracy),
            _num(a.accuracy_drop_pt),
            _pct(a.top1_agreement),
            _num(a.cosine_similarity, ".4f"),
            _num(a.max_relative_error, ".3f"),
            "; ".join(a.reasons),
        ]
        for a in row.attempts
    ]
    if row.status == "failed":
        cells.append([_key(row), "-", "FAILED", "-", "-", "-", "-", "-", row.reason or ""])
    return cells


def print_model(model: ModelReport) -> None:
    print(
        f"\n{model.name}: {model.description}\n  {model.parameters / 1e6:.1f} M parameters, "
        f"{model.size_mb} MB; ORT FP32 accuracy {_pct(model.reference_accuracy)} % on "
        f"{model.validation_samples} held-out samples; {model.calibration_samples} calibration samples; "
        f"build {model.build_s} s, compiles (profiles + forced recipe) {model.compile_s} s"
    )
    rows: list[list[object]] = []
    if model.baseline:
        b, c = model.baseline, model.baseline_cpu
        rows.append(
            [BASELINE, "-", "ORT_ENABLE_ALL", "fp32", f"{model.size_mb:.1f}", _pct(model.reference_accuracy),
             "0.00", "100.00", _num(b.p50_ms), _num(b.p10_ms), _num(b.p90_ms), "1.00", "1.00",
             _num(c.cpu_ms if c else None), "1.00", "-"]
        )  # fmt: skip
    rows += [artifact_cells(row) for row in model.artifacts]
    print(render_table(ARTIFACT_HEADERS, rows))
    print("\n  attempts (every recipe tried; the gate's reasons for each rejection):")
    print(render_table(ATTEMPT_HEADERS, [cells for row in model.artifacts for cells in attempt_cells(row)]))
    t = model.target
    best = f" [{t.best}]" if t.best else ""
    print(f"\n  target (best CPU INT8 >= {t.min_speedup}x, drop <= {t.max_drop_pt} pt): {t.note}{best}")


def print_report(report: Report) -> None:
    m = report.machine
    print(f"\nCompiler benchmark, {report.date}, {report.total_s:.0f} s")
    print(
        f"machine: {m.usable_cpus} usable CPUs ({m.cpu_model}; "
        f"flags: {', '.join(m.cpu_flags) or 'none of note'}), "
        f"{m.platform}, Python {m.python}, "
        + ", ".join(f"{k} {v}" for k, v in m.versions.items())
        + f"; load average {m.load_average_start} -> {m.load_average_end}"
    )
    for model in report.models:
        print_model(model)
    if report.budget_exhausted:
        print("\nWARNING: --budget-s ran out; some blocks have fewer runs than asked or were skipped")


# --- command line --------------------------------------------------------------------------------


def specs(args: argparse.Namespace) -> list[ModelSpec]:
    shape = BertShape(layers=args.bert_layers, seq_len=args.bert_seq)
    available = {
        "resnet": ModelSpec(
            name="resnet18_digits",
            description=f"ResNet-18 topology, 3x{args.image_size}x{args.image_size} upsampled digits, "
            "random BN-folded convs, trained Gemm head",
            build=lambda: resnet18_digits(
                image_size=args.image_size,
                calibration_count=args.cnn_calibration,
                validation_count=args.cnn_validation,
                threads=args.threads,
            ),
            default_method="static-qdq",
            forced="dynamic",
            target_speedup=3.0,
        ),
        "bert": ModelSpec(
            name="bert_digits",
            description=f"BERT-base width ({shape.hidden} hidden, {shape.heads} heads, FFN {shape.ffn}), "
            f"{shape.layers} layers, seq {shape.seq_len}, vocab {shape.vocab}, random encoder, trained head",
            build=lambda: bert_digits(
                shape=shape,
                calibration_count=args.bert_calibration,
                validation_count=args.bert_validation,
                train_count=args.bert_train,
                threads=args.threads,
            ),
            default_method="dynamic",
            forced="static-qdq",
            target_speedup=2.0,
        ),
    }
    return [available[name] for name in args.models]


def run(args: argparse.Namespace) -> Report:
    budget = Budget(args.budget_s)
    start_load = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    models = []
    with tempfile.TemporaryDirectory(prefix="edgefabric-compile-bench-") as tmp:
        root = args.work_dir or Path(tmp)
        for spec in specs(args):
            if not budget.allows():
                break
            models.append(bench_model(spec, root / spec.name, args, budget))
    return Report(
        benchmark="compile",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=" ".join(["python", *sys.argv]),
        machine=machine_info(start_load),
        settings={k: str(v) for k, v in sorted(vars(args).items())},
        models=models,
        total_s=round(time.monotonic() - started, 1),
        budget_exhausted=budget.exhausted,
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compile a ResNet-18- and a BERT-shaped digits model for every CPU-validatable profile "
        "and compare each artifact's accuracy and batch-1 latency with ORT FP32.",
    )
    parser.add_argument("--models", nargs="+", choices=("resnet", "bert"), default=["resnet", "bert"])
    parser.add_argument(
        "--profiles", nargs="+", default=list(DEFAULT_PROFILES), help="hardware profiles to compile"
    )
    parser.add_argument("--skip-forced", action="store_true", help="skip the forced alternative ORT recipe")
    parser.add_argument(
        "--x64-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also gate and time the cpu-x86_64 artifact run with ORT's {PRECISION_OPTION}=1 "
        "(a diagnostic, not a compiler output)",
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=112, help="CNN input side (digits upsampled)"
    )
    parser.add_argument("--cnn-calibration", type=positive_int, default=300, help="CNN calibration samples")
    parser.add_argument(
        "--cnn-validation", type=positive_int, default=540, help="CNN validation samples (<= 540)"
    )
    parser.add_argument("--bert-layers", type=positive_int, default=4, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--bert-seq", type=positive_int, default=128, help="encoder sequence length (>= 65)")
    parser.add_argument(
        "--bert-calibration", type=positive_int, default=100, help="encoder calibration samples"
    )
    parser.add_argument(
        "--bert-validation", type=positive_int, default=200, help="encoder validation samples"
    )
    parser.add_argument("--bert-train", type=positive_int, default=400, help="training images for the head")
    parser.add_argument("--threads", type=positive_int, default=2, help="threads for every runtime")
    parser.add_argument("--rounds", type=positive_int, default=6, help="timing rounds (order alternates)")
    parser.add_argument("--runs", type=positive_int, default=15, help="timed runs per block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before each block")
    parser.add_argument("--pause-s", type=float, default=0.3, help="pause before each timing block")
    parser.add_argument("--block-max-s", type=float, default=4.0, help="time limit of one timing block")
    parser.add_argument(
        "--cpu-runs",
        type=int,
        default=10,
        help="runs per variant of the one-thread CPU-cost measurement (0: skip)",
    )
    parser.add_argument(
        "--cpu-max-s", type=float, default=15.0, help="time limit of one CPU-cost measurement"
    )
    parser.add_argument("--max-drop-pt", type=float, default=1.0, help="accuracy-drop limit of the targets")
    parser.add_argument("--budget-s", type=float, default=2400.0, help="limit for the whole run")
    parser.add_argument("--work-dir", type=Path, help="keep models and artifacts here (default: a temp dir)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except (FabricError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print_report(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    print(f"\nJSON report: {args.json_out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
