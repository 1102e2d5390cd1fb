"""Checking an input ONNX model before any pass touches it.

`inspect_model` runs the ONNX checker (full check), shape inference and the opset check, and
reports the model's inputs, outputs and operator domains. It fails early with a reason the user
can act on (`InvalidModelError`), so no profile starts on a model that cannot work anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx

from model_compiler.errors import InvalidModelError
from protocols.manifest import TensorSpec

MIN_OPSET = 13  # QDQ quantization with per-channel axes needs 13
MAX_OPSET = 21

_ELEMENT_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path
    sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    operators: frozenset[tuple[str, str]]  # (domain, op_type); "" is the default domain

    @property
    def non_standard_operators(self) -> list[str]:
        """Operators outside the default ONNX domain (e.g. ONNX-ML `ai.onnx.ml.TreeEnsemble...`)."""
        return sorted(f"{domain}.{op}" for domain, op in self.operators if domain not in ("", "ai.onnx"))

    @property
    def is_transformer_like(self) -> bool:
        """MatMul-heavy graphs without convolutions: quantize dynamically, not with static QDQ."""
        ops = {op for _, op in self.operators}
        return "Conv" not in ops and bool(ops & {"MatMul", "Attention", "Softmax"}) and "Softmax" in ops

    @property
    def has_convolutions(self) -> bool:
        return any(op == "Conv" for _, op in self.operators)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(
        name=value.name, dtype=_ELEMENT_TYPES.get(tensor.elem_type, str(tensor.elem_type)), shape=dims
    )


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node has a unique name (quantizers exclude nodes by name)."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = {node.name for node in named.graph.node if node.name}
    for index, node in enumerate(named.graph.node):
        if not node.name:
            candidate = f"{node.op_type.lower()}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    return named


def inspect_model(path: Path) -> ModelInfo:
    """Load and check `path`; raise `InvalidModelError` saying why it cannot be compiled."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidModelError(path, e.strerror or str(e)) from e
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise InvalidModelError(path, f"not an ONNX protobuf ({type(e).__name__})") from e
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidModelError(path, f"opset {opset} unsupported (need {MIN_OPSET}..{MAX_OPSET})")
    # Strict shape inference knows only the default domain; ONNX-ML graphs get the lenient one.
    is_standard = all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    try:
        onnx.checker.check_model(model, full_check=is_standard)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=is_standard)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InvalidModelError(path, str(e).strip().splitlines()[0]) from e
    initializers = {i.name for i in inferred.graph.initializer}
    inputs = tuple(_spec(v) for v in inferred.graph.input if v.name not in initializers)
    if not inputs or not inferred.graph.output:
        raise InvalidModelError(path, "the graph has no inputs or no outputs")
    return ModelInfo(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        opset=opset,
        inputs=inputs,
        outputs=tuple(_spec(v) for v in inferred.graph.output),
        operators=frozenset((n.domain, n.op_type) for n in inferred.graph.node),
    )
