"""Compile passes: each takes the current build and returns the next one.

A build is either an ONNX file (`Build.onnx_path`) or an in-memory OpenVINO model
(`Build.ov_model`), plus whether to compress weights to FP16 when emitting. Passes never write
outside `PassContext.work_dir`; `emit` writes the final files into the artifact directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hardware_profiles.profile import CompilePass, HardwareProfile, QuantizationRecipe
from model_compiler.datasets import Samples
from model_compiler.errors import MissingToolchainError, PassFailedError
from model_compiler.inspection import ModelInfo


@dataclass(frozen=True, slots=True)
class Build:
    """One of: an ONNX file, an in-memory OpenVINO model, a TFLite file.

    `input_permutations` maps an input name to the axes permutation that turns a feed in the
    source model's layout into the artifact's (onnx2tf makes NCHW inputs NHWC).
    """

    onnx_path: Path | None = None
    ov_model: Any = None
    tflite_path: Path | None = None
    compress_to_fp16: bool = False
    input_permutations: dict[str, tuple[int, ...]] = field(default_factory=dict)


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
    from model_compiler.passes import onnxruntime_passes, openvino_passes, tflite_passes

    return {
        "ort-graph-optimize": onnxruntime_passes.graph_optimize,
        "quantize-static-qdq": onnxruntime_passes.quantize_static_qdq,
        "quantize-dynamic": onnxruntime_passes.quantize_dynamic,
        "convert-fp16": onnxruntime_passes.convert_fp16,
        "openvino-convert": openvino_passes.convert,
        "openvino-compress-fp16": openvino_passes.compress_fp16,
        "nncf-quantize": openvino_passes.nncf_quantize,
        "fix-static-shapes": tflite_passes.fix_static_shapes,
        "onnx2tf-convert": tflite_passes.convert,
        "tflite-quantize": tflite_passes.select_quantized,
    }


def run_passes(passes: tuple[CompilePass, ...], build: Build, context: PassContext) -> Build:
    """Apply `passes` in order."""
    registry = _registry()
    for name in passes:
        implementation = registry[name]
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
