"""Passes for the LiteRT (TFLite) profile: static shapes, onnx2tf conversion, INT8 variant pick.

onnx2tf lives in the `tflite-compiler` extra (TensorFlow, ~2.7 GB, Python >= 3.12). Measured
pitfalls designed around: onnx2tf fails on a dynamic batch, so the batch is fixed to 1 and
shape inference runs first; its default `flatbuffer_direct` backend made FP16/INT8 files that
crashed in LiteRT, so the `tf_converter` backend is used. onnx2tf turns NCHW inputs into NHWC
(it ignores the keep-NCHW option with this backend), so the build records a permutation that the
runtime applies to feeds given in the ONNX layout.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np
import onnx

from model_compiler.errors import MissingToolchainError, PassFailedError
from model_compiler.passes import Build, PassContext

NCHW_TO_NHWC: tuple[int, ...] = (0, 2, 3, 1)
_VARIANTS = {
    "none": "float32",
    "tflite-full-int8": "full_integer_quant",
    "tflite-dynamic-range": "dynamic_range_quant",
}


def fix_static_shapes(build: Build, context: PassContext) -> Build:
    """Batch dimension fixed to 1 on every input and output, then strict shape inference."""
    if build.onnx_path is None:
        raise ValueError("fix-static-shapes needs an ONNX model")
    model = onnx.load(str(build.onnx_path))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    target = context.work_dir / "static.onnx"
    onnx.save(model, str(target))
    return Build(onnx_path=target)


def _onnx2tf() -> Any:
    if sys.version_info < (3, 12):
        raise MissingToolchainError(
            "TFLite conversion (onnx2tf)",
            "tflite-compiler",
            f"needs Python >= 3.12, this is {sys.version[:4]}",
        )
    try:
        import onnx2tf
    except ImportError as e:
        raise MissingToolchainError("TFLite conversion (onnx2tf)", "tflite-compiler") from e
    return onnx2tf


def convert(build: Build, context: PassContext) -> Build:
    """ONNX -> TFLite through onnx2tf's TF-converter backend, with the recipe's INT8 variant."""
    if build.onnx_path is None:
        raise ValueError("onnx2tf-convert needs an ONNX model")
    onnx2tf = _onnx2tf()
    output_dir = context.work_dir / f"tflite-{context.recipe_tag}"
    permutations: dict[str, tuple[int, ...]] = {
        spec.name: NCHW_TO_NHWC for spec in context.model.inputs if len(spec.shape) == 4
    }
    calibration = []
    samples = context.calibration.take(slice(0, context.recipe.calibration_samples))
    for name, array in samples.inputs.items():
        path = context.work_dir / f"calibration-{name}.npy"
        np.save(path, array.transpose(permutations[name]) if name in permutations else array)
        calibration.append([name, str(path), 0.0, 1.0])  # mean 0, std 1: samples are already normalized
    method = context.recipe.method
    with contextlib.redirect_stdout(sys.stderr):
        onnx2tf.convert(
            input_onnx_file_path=str(build.onnx_path),
            output_folder_path=str(output_dir),
            tflite_backend="tf_converter",
            copy_onnx_input_output_names_to_tflite=True,
            output_dynamic_range_quantized_tflite=method == "tflite-dynamic-range",
            output_integer_quantized_tflite=method == "tflite-full-int8",
            quant_type="per-channel" if context.recipe.per_channel else "per-tensor",
            custom_input_op_name_np_data_path=calibration if method == "tflite-full-int8" else None,
            not_use_onnxsim=True,
            non_verbose=True,
        )
    # onnx2tf names its outputs after the input file: <stem>_float32.tflite, <stem>_<variant>.tflite
    return Build(
        tflite_path=output_dir / f"{build.onnx_path.stem}_float32.tflite", input_permutations=permutations
    )


def select_quantized(build: Build, context: PassContext) -> Build:
    """Pick the variant of the recipe's method from the conversion's outputs."""
    if build.tflite_path is None:
        raise ValueError("tflite-quantize needs the output of onnx2tf-convert")
    stem = build.tflite_path.name.removesuffix("_float32.tflite")
    variant = build.tflite_path.with_name(f"{stem}_{_VARIANTS[context.recipe.method]}.tflite")
    if not variant.is_file():
        raise PassFailedError("tflite-quantize", f"onnx2tf produced no {variant.name} (see its log)")
    return Build(tflite_path=variant, input_permutations=build.input_permutations)
