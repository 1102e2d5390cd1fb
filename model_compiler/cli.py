"""`edgefabric compile local`: one ONNX in, a validated artifact per hardware profile out.

Registered under the `edgefabric compile` group by `add_local_compile_command`; works without a
control plane (`compile start|status` are the control plane's compile jobs). Exit code 1 when any
requested profile did not build (each says why in the summary).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from model_compiler.compiler import CompileReport, CompileRequest, compile_model
from protocols.cli_support import EXIT_FAILED, EXIT_OK, Progress, render_table


def _default_model_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-_")
    return name or "model"


def _summary(report: CompileReport) -> str:
    rows = []
    for result in report.results:
        attempt = result.attempts[-1] if result.attempts else None
        metrics = attempt.metrics if attempt else None
        latency = attempt.host_latency if attempt else None
        rows.append(
            [
                result.profile,
                result.status,
                attempt.quantization if attempt else "-",
                f"{metrics.top1_agreement:.3f}" if metrics else "-",
                f"{metrics.accuracy:.3f}" if metrics and metrics.accuracy is not None else "-",
                f"{metrics.max_relative_error:.3f}" if metrics else "-",
                f"{latency.p50_ms:.2f}/{latency.p95_ms:.2f}" if latency else "-",
                "cpu-equivalent" if metrics and metrics.is_cpu_equivalent else ("host" if metrics else "-"),
                result.reason or "",
            ]
        )
    headers = [
        "PROFILE",
        "STATUS",
        "QUANT",
        "TOP1-AGREE",
        "ACCURACY",
        "MAX-REL-ERR",
        "P50/P95 MS",
        "VALIDATED",
        "WHY",
    ]
    return render_table(headers, rows)


def _compile(args: argparse.Namespace) -> int:
    model_path = Path(args.model)
    profiles = tuple(dict.fromkeys(args.profile))
    progress = Progress(len(profiles))

    def on_progress(profile: str, stage: str) -> None:
        if stage in ("built", "rejected", "failed"):
            progress.advance()
        progress.step(profile, stage)

    request = CompileRequest(
        model_path=model_path,
        profiles=profiles,
        out_dir=Path(args.out),
        model_name=args.model_name or _default_model_name(model_path),
        version=args.version,
        calibration_path=Path(args.calibration) if args.calibration else None,
        validation_path=Path(args.validation) if args.validation else None,
        quantization=args.quantization,
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):  # toolchains (NNCF) print progress to stdout
            report = compile_model(request, on_progress)
    finally:
        progress.close()
    (request.out_dir / "compile-report.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(_summary(report))
        print(f"\nartifacts in {request.out_dir}/<profile>/, report in {request.out_dir}/compile-report.json")
    return EXIT_OK if report.is_success else EXIT_FAILED


def add_local_compile_command(actions: argparse._SubParsersAction[Any]) -> None:
    parser = actions.add_parser(
        "local", help="compile an ONNX file here for hardware profiles, validate every build against it"
    )
    parser.add_argument("model", metavar="MODEL.onnx")
    parser.add_argument(
        "--profile",
        action="append",
        required=True,
        metavar="P",
        help="hardware profile (repeatable), see hardware_profiles/profiles/",
    )
    parser.add_argument("--calibration", metavar="F.npz", help="input name -> samples (quantization)")
    parser.add_argument(
        "--validation",
        metavar="F.npz",
        help="held-out samples (+ optional 'labels'); default: 20%% of --calibration",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="one sub-directory per built profile")
    parser.add_argument("--model-name", help="default: the file name")
    parser.add_argument("--version", default="1", help="model version recorded in manifests (default 1)")
    parser.add_argument(
        "--quantization",
        choices=["static-qdq", "dynamic"],
        help="override INT8 method for onnxruntime profiles",
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.set_defaults(handler=_compile)
