"""Compile passes: each takes the current build and returns the next one.

A build is either an ONNX file (`Build.onnx_path`) or an in-memory OpenVINO model
(`Build.ov_model`), plus whether to compress weights to FP16 when emitting. Passes never write
outside `PassContext.work_dir`; `emit` writes the final files into the artifact directory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hardware_profiles.profile import CompilePass, HardwareProfile, QuantizationRecipe
from model_compiler.datasets import Samples
from model_compiler.errors import MissingToolchainError, PassFailedError
from model_compiler.inspection import ModelInfo


@dataclass(frozen=True, slots=True)
class Build:
    onnx_path: Path | None = None
    ov_model: Any = None
    compress_to_fp16: bool = False


@dataclass(frozen=True, slots=True)
class PassContext:
    profile: HardwareProfile
    recipe: QuantizationRecipe
    model: ModelInfo
    calibration: Samples
    work_dir: Path
    recipe_tag: str = "default"


Pass = Callable[[Build, PassContext], Build]


def _registry() -> dict[CompilePass, Pass]:
    from model_compiler.passes import onnxruntime_passes, openvino_passes

    return {
        "ort-graph-optimize": onnxruntime_passes.graph_optimize,
        "quantize-static-qdq": onnxruntime_passes.quantize_static_qdq,
        "quantize-dynamic": onnxruntime_passes.quantize_dynamic,
        "convert-fp16": onnxruntime_passes.convert_fp16,
        "openvino-convert": openvino_passes.convert,
        "openvino-compress-fp16": openvino_passes.compress_fp16,
        "nncf-quantize": openvino_passes.nncf_quantize,
    }


def run_passes(passes: tuple[CompilePass, ...], build: Build, context: PassContext) -> Build:
    """Apply `passes` in order; a quantize pass whose recipe method is `none` is skipped."""
    registry = _registry()
    for name in passes:
        implementation = registry.get(name)
        if implementation is None:
            raise MissingToolchainError(
                f"TFLite conversion (onnx2tf, for pass {name!r})",
                "tflite-compiler",
                f"needs Python >= 3.12, this is {sys.version_info.major}.{sys.version_info.minor}",
            )
        try:
            build = implementation(build, context)
        except (MissingToolchainError, PassFailedError):
            raise
        except Exception as e:  # a toolchain's own exception: keep the reason, drop the traceback
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PassFailedError(name, f"{type(e).__name__}: {first_line}") from e
    return build


def with_recipe(context: PassContext, recipe: QuantizationRecipe, tag: str) -> PassContext:
    return replace(context, recipe=recipe, recipe_tag=tag)
