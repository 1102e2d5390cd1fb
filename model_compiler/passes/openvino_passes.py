"""Passes for OpenVINO profiles: ONNX -> IR, FP16 weight compression, NNCF INT8.

NNCF's INT8 of a BERT-shaped encoder collapsed to 31 % top-1 agreement while "succeeding"; the
quantized classifier head was the cause, so `keep_head_fp` puts the last MatMul/Convolution in
NNCF's ignored scope. The validation gate catches the collapse either way.
"""

from __future__ import annotations

from typing import Any

from model_compiler.errors import MissingToolchainError
from model_compiler.passes import Build, PassContext

_COMPUTE_TYPES = ("MatMul", "Convolution")


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise MissingToolchainError("openvino", "openvino") from e
    return openvino


def convert(build: Build, context: PassContext) -> Build:
    """Read the ONNX model into an in-memory OpenVINO model (saved as IR when emitted)."""
    if build.onnx_path is None:
        raise ValueError("openvino-convert needs an ONNX model")
    return Build(ov_model=_openvino().convert_model(str(build.onnx_path)))


def compress_fp16(build: Build, context: PassContext) -> Build:
    """Store weights as FP16 in the IR (for GPU / NPU); inference precision stays the profile's."""
    return Build(ov_model=build.ov_model, compress_to_fp16=True)


def head_op_names(ov_model: Any) -> list[str]:
    compute = [
        op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() in _COMPUTE_TYPES
    ]
    return compute[-1:]


def nncf_quantize(build: Build, context: PassContext) -> Build:
    """INT8 through NNCF post-training quantization with the calibration samples."""
    if build.ov_model is None:
        raise ValueError("nncf-quantize needs an OpenVINO model (run openvino-convert first)")
    try:
        import nncf
    except ImportError as e:
        raise MissingToolchainError("nncf", "compiler") from e
    samples = context.calibration.take(slice(0, context.recipe.calibration_samples))
    dataset = nncf.Dataset(list(samples.batches(1)))
    ignored = nncf.IgnoredScope(names=head_op_names(build.ov_model)) if context.recipe.keep_head_fp else None
    quantized = nncf.quantize(
        build.ov_model,
        dataset,
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER if context.model.is_transformer_like else None,
        ignored_scope=ignored,
    )
    return Build(ov_model=quantized, compress_to_fp16=build.compress_to_fp16)
