"""The Open Inference Protocol v2 codec: tensors in and out of JSON, exactly, or a 400 saying why."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent import oip
from edge_agent.errors import InvalidInferenceInputError
from edge_agent.serving import ServedModel
from hardware_profiles.runtimes import Feeds
from protocols.manifest import (
    AcceptanceSpec,
    ArtifactFile,
    ArtifactManifest,
    LatencyStats,
    OutputHistogram,
    TensorSpec,
    ValidationMetrics,
)

INPUTS = (TensorSpec(name="pixels", dtype="float32", shape=(None, 64)),)
OUTPUTS = (
    TensorSpec(name="logits", dtype="float32", shape=(None, 10)),
    TensorSpec(name="label", dtype="int64", shape=(None,)),
)


class FakeSession:
    """An `InferenceSession` with a fixed signature; the codec never runs it."""

    inputs: tuple[TensorSpec, ...] = INPUTS
    outputs: tuple[TensorSpec, ...] = OUTPUTS
    description = "fake"
    is_cpu_equivalent = False

    def run(self, feeds: Feeds) -> Feeds:
        raise AssertionError("the codec does not run models")


def manifest(version: str = "1") -> ArtifactManifest:
    return ArtifactManifest(
        model="digits",
        version=version,
        hw_profile="cpu-x86_64",
        runtime="onnxruntime",
        artifact_format="onnx",
        precision="fp32",
        recipe="ort-basic-optimizations",
        model_file="model.onnx",
        files=(ArtifactFile(path="model.onnx", sha256="ab" * 32, size_bytes=1),),
        inputs=INPUTS,
        outputs=OUTPUTS,
        validation=ValidationMetrics(
            samples=540, top1_agreement=1.0, max_abs_error=0.0, cosine_similarity=1.0, validated_on="cpu"
        ),
        host_latency=LatencyStats(p50_ms=0.1, p95_ms=0.2, runs=30, measured_on="x86_64"),
        acceptance=AcceptanceSpec(
            golden_file="model.onnx", max_abs_error=1e-4, min_top1_agreement=0.99, p95_latency_ms=5.0
        ),
        reference_histogram=OutputHistogram(kind="top1", counts=(1,) * 10),
        source_model_sha256="cd" * 32,
    )


@pytest.fixture
def model() -> ServedModel:
    return ServedModel("digits", manifest("7"), FakeSession())


def request_body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def decode_error(body: bytes) -> oip.OipError:
    with pytest.raises(oip.OipError) as raised:
        oip.decode_request(body)
    return raised.value


def extremes(datatype: str) -> np.ndarray[Any, Any]:
    dtype = oip.DATATYPES[datatype]
    if dtype.kind == "b":
        values: list[Any] = [True, False, True, True, False, False]
    elif dtype.kind == "f":
        info = np.finfo(dtype)
        values = [0.1, -2.5, float(info.max), float(info.min), float(info.tiny), 0.0]
    else:
        limits = np.iinfo(dtype)
        values = [int(limits.min), int(limits.max), 0, 1, 7, int(limits.max) - 1]
    return np.array(values, dtype=dtype).reshape(2, 3)


@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
def test_every_datatype_survives_a_request_round_trip_bit_for_bit(datatype: str) -> None:
    sent = extremes(datatype)
    request, tensors = oip.decode_request(oip.encode_request({"x": sent}, ["y"], request_id="r1"))
    received = tensors["x"]
    assert request.inputs[0].datatype == datatype
    assert request.id == "r1"
    assert [output.name for output in request.outputs or ()] == ["y"]
    assert received.dtype == sent.dtype
    assert received.shape == (2, 3)
    assert received.tobytes() == sent.tobytes()


@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
def test_every_datatype_survives_a_response_round_trip_bit_for_bit(datatype: str, model: ServedModel) -> None:
    sent = extremes(datatype)
    body = oip.encode_response(model, {"logits": sent}, "r2", None)
    response, tensors = oip.decode_response(body)
    assert (response.model_name, response.model_version, response.id) == ("digits", "7", "r2")
    assert tensors["logits"].dtype == sent.dtype
    assert tensors["logits"].tobytes() == sent.tobytes()


def test_response_holds_the_requested_outputs_in_the_order_asked(model: ServedModel) -> None:
    outputs = {"logits": np.zeros((1, 10), np.float32), "label": np.array([3])}
    body = oip.encode_response(model, outputs, None, ["label", "logits"])
    response, tensors = oip.decode_response(body)
    assert [output.name for output in response.outputs] == ["label", "logits"]
    assert response.id is None
    assert b'"id"' not in body  # absent optional fields are left out, not null
    assert list(oip.decode_response(oip.encode_response(model, outputs, None, ["label"]))[1]) == ["label"]
    assert tensors["label"].tolist() == [3]


def test_nested_and_flat_data_give_the_same_tensor() -> None:
    flat = {"name": "x", "shape": [2, 2, 2], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}
    nested = {**flat, "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}
    _, from_flat = oip.decode_request(request_body(flat))
    _, from_nested = oip.decode_request(request_body(nested))
    np.testing.assert_array_equal(from_flat["x"], from_nested["x"])
    assert from_nested["x"].shape == (2, 2, 2)
    assert from_nested["x"][1, 0, 1] == 6


def test_empty_and_scalar_tensors_decode() -> None:
    empty = {"name": "e", "shape": [0, 3], "datatype": "BOOL", "data": []}
    scalar = {"name": "s", "shape": [], "datatype": "FP64", "data": [2.5]}
    _, tensors = oip.decode_request(request_body(empty, scalar))
    assert tensors["e"].shape == (0, 3) and tensors["e"].dtype == np.bool_
    assert tensors["s"].shape == () and float(tensors["s"]) == 2.5


@pytest.mark.parametrize(
    ("shape", "data"),
    [([2, 3], [1.0, 2.0, 3.0]), ([1, 2], [1.0, 2.0, 3.0]), ([2, 2], [[1.0, 2.0], [3.0]])],
    ids=["too-few", "too-many", "ragged"],
)
def test_data_that_does_not_fill_the_shape_is_a_bad_request(shape: list[int], data: list[Any]) -> None:
    error = decode_error(request_body({"name": "x", "shape": shape, "datatype": "FP32", "data": data}))
    assert error.status_code == 400
    assert "'x'" in error.message


@pytest.mark.parametrize("datatype", ["BYTES", "BF16", "FP8", "fp32", "float32"])
def test_unknown_or_unsupported_datatype_is_a_bad_request(datatype: str) -> None:
    error = decode_error(request_body({"name": "x", "shape": [1], "datatype": datatype, "data": [1]}))
    assert error.status_code == 400
    assert datatype in error.message and "FP32" in error.message


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT32", [1.5]),
        ("INT8", [128]),
        ("UINT8", [-1]),
        ("UINT64", [-1]),
        ("UINT64", [1.5, 2**64 - 1]),
        ("INT64", [2**63]),
        ("BOOL", [1]),
        ("FP32", [True]),
        ("FP32", ["1.0"]),
        ("FP32", [None]),
        ("FP32", [1e39]),
        ("FP16", [70000.0]),
    ],
)
def test_values_of_another_type_or_out_of_range_are_refused_not_cast(datatype: str, data: list[Any]) -> None:
    error = decode_error(
        request_body({"name": "x", "shape": [len(data)], "datatype": datatype, "data": data})
    )
    assert error.status_code == 400
    assert datatype in error.message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"inputs": {}}',
        b'{"outputs": []}',
        b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1.0]}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": 1.0}]}',
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}',
        b'{"inputs": [{"name": "x", "shape": ['
        + b",".join([b"1"] * 33)
        + b'], "datatype": "FP32", "data": [1]}]}',
    ],
    ids=[
        "empty",
        "not-json",
        "array",
        "inputs-object",
        "no-inputs",
        "negative-dim",
        "scalar-data",
        "no-data",
        "rank-33",
    ],
)
def test_malformed_request_is_a_bad_request(body: bytes) -> None:
    assert decode_error(body).status_code == 400


def test_an_input_given_twice_is_a_bad_request() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    assert "twice" in decode_error(request_body(tensor, tensor)).message


def test_unknown_fields_from_other_clients_are_ignored() -> None:
    tensor = {
        "name": "x",
        "shape": [1],
        "datatype": "FP32",
        "data": [1.0],
        "parameters": {"p": 1},
        "extra": 2,
    }
    request, tensors = oip.decode_request(request_body(tensor, parameters={"priority": 1}, extra=True))
    assert request.parameters == {"priority": 1}
    assert tensors["x"].tolist() == [1.0]


def test_request_of_another_datatype_than_the_model_takes_is_refused(model: ServedModel) -> None:
    body = oip.encode_request({"pixels": np.zeros((1, 64), np.float64)})
    request, _ = oip.decode_request(body)
    with pytest.raises(InvalidInferenceInputError, match="FP64, model takes FP32"):
        oip.check_request(model, request)


def test_requesting_an_output_the_model_lacks_is_refused(model: ServedModel) -> None:
    request, _ = oip.decode_request(oip.encode_request({"pixels": np.zeros((1, 64), np.float32)}, ["probs"]))
    with pytest.raises(InvalidInferenceInputError, match="probs"):
        oip.check_request(model, request)
    fine, _ = oip.decode_request(oip.encode_request({"pixels": np.zeros((1, 64), np.float32)}, ["label"]))
    oip.check_request(model, fine)


def test_model_metadata_shows_dynamic_dimensions_as_minus_one(model: ServedModel) -> None:
    metadata = oip.model_metadata(model)
    assert metadata.name == "digits"
    assert metadata.versions == ("7",)
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("pixels", "FP32", (-1, 64))]
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [
        ("logits", "FP32", (-1, 10)),
        ("label", "INT64", (-1,)),
    ]


def test_client_side_array_without_an_oip_datatype_is_refused_before_sending() -> None:
    with pytest.raises(oip.OipError, match="no OIP datatype") as raised:
        oip.encode_request({"text": np.array(["hello"])})
    assert raised.value.status_code == 400


def test_malformed_reply_is_a_bad_gateway_for_the_client() -> None:
    with pytest.raises(oip.OipError) as raised:
        oip.decode_response(b'{"model_name": "digits"}')
    assert raised.value.status_code == 502
