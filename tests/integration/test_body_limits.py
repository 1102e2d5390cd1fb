"""Request body limits per route: model uploads up to `max_upload_bytes`, every other route up to
`max_body_bytes`, whether the body declares its length or is streamed (chunked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from control_plane.auth.tokens import Role
from tests.integration.test_control_plane_api import _api, assert_error
from tests.integration.test_control_plane_registry import upload

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid ONNX model of a little over 2 MiB (one 64 x 8192 float32 weight matrix)."""
    weights = onnx.numpy_helper.from_array(np.ones((64, 8192), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["logits"])],
        "big",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8192])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    data = model.SerializeToString()
    assert 2 * MIB < len(data) < 3 * MIB
    return data


def chunked(total_bytes: int, prefix: bytes = b"") -> Iterator[bytes]:
    """A body without Content-Length: `prefix`, then zeros in 64 KiB chunks."""
    yield prefix
    for _ in range(total_bytes // (64 * 1024)):
        yield b"0" * (64 * 1024)


def test_a_2_mib_model_upload_succeeds_while_other_routes_keep_1_mib(
    tmp_path: Path, big_model: bytes
) -> None:
    for api in _api(tmp_path):
        created = upload(api, "big", big_model)
        assert created.status_code == 201, created.text
        assert created.json()["onnx_size"] == len(big_model)

        big_json = b'{"name": "x", "role": "viewer", "pad": "' + b"y" * (2 * MIB) + b'"}'
        assert_error(
            api.call("POST", "/api/v1/tokens", Role.ADMIN, content=big_json), 413, "request_too_large"
        )
        streamed = api.call("POST", "/api/v1/tokens", Role.ADMIN, content=chunked(2 * MIB, b'{"pad": "'))
        assert_error(streamed, 413, "request_too_large")
        assert api.call("GET", "/api/v1/tokens", Role.ADMIN).json()["total"] == 3  # the set-up tokens


def test_an_upload_over_max_upload_bytes_is_413_declared_or_streamed(
    tmp_path: Path, big_model: bytes
) -> None:
    for api in _api(tmp_path, max_upload_bytes=2 * MIB):
        body = assert_error(upload(api, "big", big_model), 413, "request_too_large")
        assert str(2 * MIB) in body["detail"]
        headers = {"content-type": "multipart/form-data; boundary=xyz"}
        streamed = api.call(
            "POST", "/api/v1/models", Role.OPERATOR, headers=headers, content=chunked(3 * MIB, b"--xyz\r\n")
        )
        assert_error(streamed, 413, "request_too_large")
        assert api.call("GET", "/api/v1/models", Role.VIEWER).json()["total"] == 0
