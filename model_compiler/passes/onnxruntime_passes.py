"""Passes for onnxruntime profiles: offline graph optimisation, INT8 (static QDQ or dynamic), FP16.

Pitfall designed around: `quantize_dynamic`'s default op set turns every Conv into ConvInteger,
which ran 7.6x slower on a CNN; dynamic quantization is therefore limited to MatMul/Gemm unless
the recipe names its own `op_types`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from model_compiler.passes import Build, PassContext

_COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


def _require_onnx(build: Build, pass_name: str) -> Any:
    if build.onnx_path is None:
        raise ValueError(f"{pass_name} needs an ONNX model, the build holds an OpenVINO model")
    return build.onnx_path


def head_node_names(model: onnx.ModelProto) -> list[str]:
    """The last compute node (the classifier head) -- left in float by `keep_head_fp`."""
    compute = [node.name for node in model.graph.node if node.op_type in _COMPUTE_OPS and node.name]
    return compute[-1:]


def graph_optimize(build: Build, context: PassContext) -> Build:
    """ORT basic-level offline optimisation (constant folding, redundant nodes): portable output."""
    source = _require_onnx(build, "ort-graph-optimize")
    target = context.work_dir / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    return Build(onnx_path=target)


def quantize_static_qdq(build: Build, context: PassContext) -> Build:
    """INT8 QDQ with calibration data (U8 activations, S8 weights, per-channel by recipe)."""
    source = context.work_dir / f"preprocessed-{context.recipe_tag}.onnx"
    # ORT's symbolic shape inference does not know ONNX-ML operators: skip it for such graphs.
    quant_pre_process(
        str(_require_onnx(build, "quantize-static-qdq")),
        str(source),
        skip_symbolic_shape=bool(context.model.non_standard_operators),
    )
    target = context.work_dir / f"int8-static-{context.recipe_tag}.onnx"
    excluded = head_node_names(onnx.load(str(source))) if context.recipe.keep_head_fp else []
    samples = context.calibration.take(slice(0, context.recipe.calibration_samples))

    class SampleReader(CalibrationDataReader):  # type: ignore[misc]
        """Feeds the calibration samples one at a time."""

        def __init__(self) -> None:
            self._batches: Iterator[dict[str, Any]] = samples.batches(1)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._batches, None)

    reader = SampleReader()
    quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=context.recipe.per_channel,
        reduce_range=context.recipe.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(context.recipe.op_types) or None,
        nodes_to_exclude=excluded,
    )
    return Build(onnx_path=target)


def quantize_dynamic(build: Build, context: PassContext) -> Build:
    """INT8 weights, activations quantized at run time; MatMul/Gemm only by default."""
    source = _require_onnx(build, "quantize-dynamic")
    target = context.work_dir / f"int8-dynamic-{context.recipe_tag}.onnx"
    excluded = head_node_names(onnx.load(str(source))) if context.recipe.keep_head_fp else []
    ort_quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=list(context.recipe.op_types) or ["MatMul", "Gemm"],
        per_channel=context.recipe.per_channel,
        reduce_range=context.recipe.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
    )
    return Build(onnx_path=target)


def convert_fp16(build: Build, context: PassContext) -> Build:
    """FP16 weights and compute, FP32 inputs/outputs kept (for CUDA / TensorRT providers)."""
    source = _require_onnx(build, "convert-fp16")
    target = context.work_dir / "fp16.onnx"
    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(target))
    return Build(onnx_path=target)
