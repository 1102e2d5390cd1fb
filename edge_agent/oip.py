"""The Open Inference Protocol v2 (KServe v2 REST) as JSON: its messages and the tensor codec, no I/O.

Speaks what Triton, KServe, MLServer and OpenVINO Model Server speak, so their clients work against the
agent. The HTTP adapter (`edge_agent.http_api`) and the Python client (`edge_agent.client`) both use it.

Invariants:
- A tensor on the wire is `{name, shape, datatype, data}`; `data` holds exactly `prod(shape)` values in
  row-major order, flat or nested (nesting is flattened, only the count and order matter).
- Values must be of their datatype: JSON `true`/`false` for BOOL, integers within range for INT*/UINT*,
  numbers finite in the target precision for FP16/FP32/FP64 (rounded to the nearest value there).
  Nothing is truncated, wrapped or overflowed to inf: such a tensor is an `OipError`. BYTES and BF16
  (no numpy dtype) are refused.
- Every decode failure is an `OipError` carrying the HTTP status the server answers with (400 for a
  request; 502 for a malformed reply read by the client); no msgspec or numpy exception escapes.
- Metadata describes what the loaded session takes (`session.inputs/outputs`), with each dynamic
  dimension as -1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from edge_agent.errors import AgentError, InvalidInferenceInputError
from protocols.codec import Decoder, encode
from protocols.errors import ProtocolError
from protocols.identifiers import NonNegative
from protocols.manifest import TensorSpec

if TYPE_CHECKING:
    from edge_agent.serving import ServedModel

SERVER_NAME = "edgefabric-agent"
DYNAMIC_DIM = -1
MAX_RANK = 32
"""Most dimensions a tensor may have (numpy 1.x's limit; 2.x allows 64)."""

DATATYPES: Mapping[str, np.dtype[Any]] = {
    name: np.dtype(dtype)
    for name, dtype in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    )
}
"""OIP datatype -> numpy dtype, for every datatype this codec carries."""

_SUPPORTED = ", ".join(DATATYPES)
_DATATYPE_OF = {dtype.name: datatype for datatype, dtype in DATATYPES.items()}
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino_ir", "tflite": "tflite"}

Tensors = dict[str, NDArray[Any]]


class OipError(AgentError):
    """A message does not follow the protocol; `status_code` is the HTTP status that says so."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class _Oip(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the protocol's JSON objects: unknown fields are ignored (other servers add some)."""


class TensorData(_Oip, frozen=True, kw_only=True, omit_defaults=True):
    """An input of a request or an output of a response."""

    name: str
    shape: Annotated[tuple[NonNegative, ...], msgspec.Meta(max_length=MAX_RANK)]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Oip, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Oip, frozen=True, kw_only=True, omit_defaults=True):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: tuple[TensorData, ...]
    outputs: tuple[RequestedOutput, ...] | None = None
    """Which outputs to return, in this order; None: all of them, in the model's order."""


class InferResponse(_Oip, frozen=True, kw_only=True, omit_defaults=True):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: tuple[TensorData, ...]


class TensorMetadata(_Oip, frozen=True, kw_only=True):
    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 marks a dynamic dimension."""


class ModelMetadata(_Oip, frozen=True, kw_only=True):
    name: str
    versions: tuple[str, ...] = ()
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


class ServerMetadata(_Oip, frozen=True, kw_only=True):
    name: str
    version: str
    extensions: tuple[str, ...]


class ErrorBody(_Oip, frozen=True, kw_only=True):
    error: str


_request_decoder: Decoder[InferRequest] = Decoder("inference request", InferRequest)
_response_decoder: Decoder[InferResponse] = Decoder("inference response", InferResponse)
model_metadata_decoder: Decoder[ModelMetadata] = Decoder("model metadata", ModelMetadata)
error_decoder: Decoder[ErrorBody] = Decoder("error body", ErrorBody)


def decode_request(body: bytes) -> tuple[InferRequest, Tensors]:
    """The request and its inputs as arrays of their datatype and shape; or `OipError` (400)."""
    request = _decode(_request_decoder, body, 400)
    tensors = _to_arrays(request.inputs, "input", 400)
    return request, tensors


def check_request(model: ServedModel, request: InferRequest) -> None:
    """Refuse (`InvalidInferenceInputError`) inputs whose datatype is not the model's, and unknown
    requested outputs; names and shapes are the server's to check (`ServedModel.check_inputs`)."""
    expected = {spec.name: spec for spec in model.session.inputs}
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is not None and tensor.datatype != (wanted := _datatype(spec.dtype, 500)):
            raise InvalidInferenceInputError(
                model.name, f"{tensor.name}: datatype {tensor.datatype}, model takes {wanted}"
            )
    names = [spec.name for spec in model.session.outputs]
    for output in request.outputs or ():
        if output.name not in names:
            raise InvalidInferenceInputError(model.name, f"no output {output.name!r}; outputs are {names}")


def encode_response(
    model: ServedModel,
    outputs: Mapping[str, NDArray[Any]],
    request_id: str | None,
    requested_outputs: Sequence[str] | None,
) -> bytes:
    """The response JSON for `outputs` of `model`: all of them, or the requested names (which
    `check_request` has checked) in the order asked."""
    names = list(outputs) if requested_outputs is None else requested_outputs
    response = InferResponse(
        model_name=model.name,
        model_version=model.version,
        id=request_id,
        outputs=tuple(_to_tensor(name, outputs[name], 500) for name in names),
    )
    return encode(response)


def encode_request(
    inputs: Mapping[str, ArrayLike],
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
) -> bytes:
    """The request JSON for `inputs` (flat data); an array with no OIP datatype is an `OipError` (400)."""
    request = InferRequest(
        id=request_id,
        inputs=tuple(_to_tensor(name, value, 400) for name, value in inputs.items()),
        outputs=None if outputs is None else tuple(RequestedOutput(name=name) for name in outputs),
    )
    return encode(request)


def decode_response(body: bytes) -> tuple[InferResponse, Tensors]:
    """The response and its outputs as arrays; a malformed reply is an `OipError` (502)."""
    response = _decode(_response_decoder, body, 502)
    return response, _to_arrays(response.outputs, "output", 502)


def model_metadata(model: ServedModel) -> ModelMetadata:
    return ModelMetadata(
        name=model.name,
        versions=(model.version,),
        platform=_PLATFORMS[model.manifest.runtime],
        inputs=tuple(_metadata(spec) for spec in model.session.inputs),
        outputs=tuple(_metadata(spec) for spec in model.session.outputs),
    )


def _decode(decoder: Decoder[Any], body: bytes, status_code: int) -> Any:
    try:
        return decoder.decode(body)
    except ProtocolError as e:
        raise OipError(status_code, e.message) from e


def _metadata(spec: TensorSpec) -> TensorMetadata:
    return TensorMetadata(
        name=spec.name,
        datatype=_datatype(spec.dtype, 500),
        shape=tuple(DYNAMIC_DIM if dim is None else dim for dim in spec.shape),
    )


def _datatype(dtype: DTypeLike, status_code: int) -> str:
    """The OIP datatype of a numpy dtype (or its name, as `TensorSpec.dtype` holds it)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:  # a runtime's own type name numpy does not know, e.g. "string"
        name = str(dtype)
    datatype = _DATATYPE_OF.get(name)
    if datatype is None:
        raise OipError(status_code, f"{name} tensors have no OIP datatype here (supported: {_SUPPORTED})")
    return datatype


def _to_tensor(name: str, value: ArrayLike, status_code: int) -> TensorData:
    array = np.asarray(value)
    return TensorData(
        name=name,
        shape=array.shape,
        datatype=_datatype(array.dtype, status_code),
        data=array.ravel().tolist(),
    )


def _to_arrays(tensors: Sequence[TensorData], role: str, status_code: int) -> Tensors:
    arrays: Tensors = {}
    for tensor in tensors:
        if tensor.name in arrays:
            raise OipError(status_code, f"{role} {tensor.name!r} appears twice")
        arrays[tensor.name] = _to_array(tensor, f"{role} {tensor.name!r}", status_code)
    return arrays


def _to_array(tensor: TensorData, where: str, status_code: int) -> NDArray[Any]:
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise OipError(status_code, f"{where}: unknown datatype {tensor.datatype!r} (known: {_SUPPORTED})")
    try:
        values = np.asarray(tensor.data)
    except ValueError as e:  # ragged nesting
        raise OipError(status_code, f"{where}: data is not a rectangular array") from e
    count = math.prod(tensor.shape)
    if values.size != count:
        raise OipError(
            status_code, f"{where}: shape {list(tensor.shape)} holds {count} values, data has {values.size}"
        )
    if values.size and dtype.kind in "iu" and values.dtype.kind not in "iu":
        values = _exact_integers(tensor.data, dtype)
    if values.size and not _holds(values, dtype):
        raise OipError(status_code, f"{where}: data are not {tensor.datatype} values")
    with np.errstate(over="ignore"):
        array = values.astype(dtype, copy=False).reshape(tensor.shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise OipError(status_code, f"{where}: data out of {tensor.datatype} range")
    return array


def _holds(values: NDArray[Any], dtype: np.dtype[Any]) -> bool:
    """Whether `values` (as numpy read them from JSON) are of `dtype`'s kind, integers within range."""
    kind = values.dtype.kind
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind == "f":
        return kind in "iuf"
    if kind not in "iu":
        return False
    limits = np.iinfo(dtype)
    return bool(limits.min <= values.min() and values.max() <= limits.max)


def _exact_integers(data: list[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """`data` as `dtype` when every value is a JSON integer in range (numpy reads UINT64 values past
    INT64's range as float64, losing digits); otherwise the values as objects, which `_holds` refuses."""
    items = np.asarray(data, dtype=object).ravel()
    limits = np.iinfo(dtype)
    if all(type(item) is int and limits.min <= item <= limits.max for item in items):
        return np.array(items.tolist(), dtype=dtype)
    return items
