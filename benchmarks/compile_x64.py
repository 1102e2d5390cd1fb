"""The cpu-x86_64 INT8 artifact run with ORT's `session.x64quantprecision` (for hosts without VNNI).

On x86-64 CPUs whose ORT U8S8 kernels can overflow (`MlasPlatformU8S8Overflow`: AVX2/AVX-512
without VNNI), ORT multiplies u8 activations by s8 weights with `vpmaddubsw`, which adds pairs of
products into a *saturating* int16. Weights that use the full +-127 range (per-channel static QDQ
and dynamic MatMul do) can clip there, and the artifact loses accuracy on that host only. The session
option `session.x64quantprecision=1` makes ORT rewrite the s8 weights as u8 (`w + 128`, zero point
moved with it) at load time so that its U8U8 kernels run, which do not clip.

This module rebuilds exactly what the compiler's cpu-x86_64 profile builds (its own passes, recipe
and calibration samples), runs it with that option set, and applies the profile's validation gate:
the diagnostic the benchmark needs to say whether a rejection on such a host is the kernel or the
recipe. It changes nothing in the compiler. Everything is bounded by the sample counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import onnxruntime
from numpy.typing import NDArray

from hardware_profiles.loader import load_profile
from hardware_profiles.profile import QUANTIZE_PASS, QuantizationMethod
from hardware_profiles.runtimes import ExecutionSettings, open_session
from model_compiler.datasets import Samples, load_samples
from model_compiler.inspection import inspect_model, with_node_names
from model_compiler.passes import Build, PassContext, run_passes
from model_compiler.validation import Comparison, compare, gate

PRECISION_OPTION = "session.x64quantprecision"
PROFILE = "cpu-x86_64"


class OrtOptionSession:
    """A bare ORT CPU session with one session config entry; `run` as `InferenceSession.run`."""

    def __init__(self, path: Path, threads: int, options: dict[str, str]) -> None:
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = threads
        for key, value in options.items():
            session_options.add_session_config_entry(key, value)
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=session_options, providers=["CPUExecutionProvider"]
        )
        self._names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return dict(zip(self._names, self._session.run(self._names, feeds), strict=True))


@dataclass(frozen=True, slots=True)
class X64Check:
    method: str
    artifact: Path
    comparison: Comparison
    reasons: list[str]


def _first_outputs(run: Any, samples: Samples) -> NDArray[Any]:
    return np.concatenate([next(iter(run(batch).values())) for batch in samples.batches(1)])


def check_x64_precision(
    model_path: Path,
    calibration_path: Path,
    validation_path: Path,
    method: QuantizationMethod,
    work_dir: Path,
    threads: int,
) -> X64Check:
    """Build the cpu-x86_64 artifact with `method` and gate it with `session.x64quantprecision=1`."""
    profile = load_profile(PROFILE)
    info = inspect_model(model_path)
    recipe = profile.compile.quantization
    if recipe.method != method:
        recipe = msgspec.structs.replace(recipe, method=method, op_types=())
    work_dir.mkdir(parents=True, exist_ok=True)
    source = work_dir / "source.onnx"
    onnx.save(with_node_names(onnx.load(str(model_path))), str(source))
    quantize = QUANTIZE_PASS[method]
    passes = tuple(p for p in profile.compile.passes if p not in QUANTIZE_PASS.values())
    passes += (quantize,) if quantize else ()
    context = PassContext(
        profile=profile,
        recipe=recipe,
        model=info,
        calibration=load_samples(calibration_path, info.inputs),
        work_dir=work_dir,
    )
    build = run_passes(passes, Build(onnx_path=source), context)
    assert build.onnx_path is not None
    validation = load_samples(validation_path, info.inputs)
    reference = open_session(model_path, ExecutionSettings(runtime="onnxruntime"))
    session = OrtOptionSession(build.onnx_path, threads, {PRECISION_OPTION: "1"})
    comparison = compare(
        _first_outputs(reference.run, validation), _first_outputs(session.run, validation), validation.labels
    )
    return X64Check(
        method=method,
        artifact=build.onnx_path,
        comparison=comparison,
        reasons=gate(comparison, profile.validation),
    )
