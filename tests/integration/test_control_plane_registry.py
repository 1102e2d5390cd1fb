"""The model registry (`/api/v1/models` and `edgefabric models`) as an operator uses it.

API tests run through Litestar's TestClient over a real SQLite data dir and real ONNX/.npz files
(`digits_mlp`); the CLI test runs `edgefabric models push|list` against a real `edgefabric up`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from control_plane.auth.tokens import Role
from control_plane.client import MultipartBody
from control_plane.errors import RangeNotSatisfiableError
from control_plane.web.ranges import byte_range
from model_compiler.sample_models import SavedSample, digits_mlp
from tests.integration.test_control_plane_api import Api, _api, assert_error
from tests.integration.test_control_plane_up import ControlPlane, _env


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from _api(tmp_path)


def upload(
    api: Api,
    name: str,
    model: bytes,
    *,
    version: str | None = None,
    role: Role = Role.OPERATOR,
    **datasets: bytes,
) -> httpx.Response:
    fields = {"name": name, **({} if version is None else {"version": version})}
    files: dict[str, Any] = {"model": ("model.onnx", model, "application/octet-stream")}
    files.update(
        {field: (f"{field}.npz", data, "application/octet-stream") for field, data in datasets.items()}
    )
    return api.call("POST", "/api/v1/models", role, data=fields, files=files)


def blob(tmp_path: Path, sha256: str) -> Path:
    return tmp_path / "data" / "blobs" / "sha256" / sha256


# --- upload and read back ----------------------------------------------------------------------


def test_uploaded_model_is_listed_described_and_downloaded_byte_for_byte(
    api: Api, sample: SavedSample, tmp_path: Path
) -> None:
    onnx_bytes = sample.model_path.read_bytes()
    calibration = sample.calibration_path.read_bytes()
    validation = sample.validation_path.read_bytes()

    created = upload(api, "digits", onnx_bytes, calibration=calibration, validation=validation)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["model"], body["version"], body["opset"]) == ("digits", "1", 17)
    assert body["onnx_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert body["onnx_size"] == len(onnx_bytes)
    assert body["calibration_sha256"] == hashlib.sha256(calibration).hexdigest()
    assert body["validation_sha256"] == hashlib.sha256(validation).hexdigest()
    assert body["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": [None, 64]}]
    assert body["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [None, 10]}]
    operator_id = api.call("GET", "/api/v1/me", Role.OPERATOR).json()["token_id"]
    assert body["created_by"] == operator_id
    for sha256, data in [(body["onnx_sha256"], onnx_bytes), (body["calibration_sha256"], calibration)]:
        assert blob(tmp_path, sha256).read_bytes() == data

    models = api.call("GET", "/api/v1/models", Role.VIEWER).json()
    assert models["total"] == 1
    assert models["items"][0] | {"updated_at": None} == {
        "name": "digits",
        "latest_version": "1",
        "version_count": 1,
        "updated_at": None,
    }
    versions = api.call("GET", "/api/v1/models/digits/versions", Role.VIEWER).json()
    assert versions["total"] == 1 and versions["items"] == [body]
    assert api.call("GET", "/api/v1/models/digits/versions/1", Role.VIEWER).json() == body

    download = api.call("GET", "/api/v1/models/digits/versions/1/download", Role.VIEWER)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.content == onnx_bytes


def test_download_serves_a_requested_byte_range(api: Api, sample: SavedSample) -> None:
    onnx_bytes = sample.model_path.read_bytes()
    assert upload(api, "digits", onnx_bytes).status_code == 201
    path = "/api/v1/models/digits/versions/1/download"

    part = api.call("GET", path, Role.VIEWER, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == onnx_bytes[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(onnx_bytes)}"
    tail = api.call("GET", path, Role.VIEWER, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == onnx_bytes[-10:]
    beyond = api.call("GET", path, Role.VIEWER, headers={"Range": f"bytes={len(onnx_bytes)}-"})
    assert_error(beyond, 416, "range_not_satisfiable")
    assert beyond.headers["content-range"] == f"bytes */{len(onnx_bytes)}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=5-", (5, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=9-3", None),
    ],
)
def test_byte_range_header_is_read_as_the_rfc_says(header: str | None, expected: object) -> None:
    assert byte_range(header, 100) == expected


def test_byte_range_past_the_end_is_not_satisfiable() -> None:
    with pytest.raises(RangeNotSatisfiableError):
        byte_range("bytes=100-", 100)


def test_versions_default_to_the_next_integer_and_latest_is_the_newest(api: Api, sample: SavedSample) -> None:
    onnx_bytes = sample.model_path.read_bytes()
    assert upload(api, "digits", onnx_bytes).json()["version"] == "1"
    assert upload(api, "digits", onnx_bytes, version="7").json()["version"] == "7"
    assert upload(api, "digits", onnx_bytes, version="8-rc.1").json()["version"] == "8-rc.1"
    assert upload(api, "digits", onnx_bytes).json()["version"] == "8"
    assert upload(api, "other", onnx_bytes).json()["version"] == "1"

    models = {m["name"]: m for m in api.call("GET", "/api/v1/models", Role.VIEWER).json()["items"]}
    assert (models["digits"]["latest_version"], models["digits"]["version_count"]) == ("8", 4)
    versions = api.call("GET", "/api/v1/models/digits/versions?limit=2", Role.VIEWER).json()
    assert [v["version"] for v in versions["items"]] == ["8", "8-rc.1"] and versions["total"] == 4


def test_duplicate_version_is_a_conflict_and_keeps_the_first(api: Api, sample: SavedSample) -> None:
    onnx_bytes = sample.model_path.read_bytes()
    first = upload(api, "digits", onnx_bytes, version="2")
    assert first.status_code == 201
    again = upload(api, "digits", onnx_bytes, version="2", calibration=sample.calibration_path.read_bytes())
    assert "already has version '2'" in assert_error(again, 409, "conflict")["detail"]
    assert api.call("GET", "/api/v1/models/digits/versions/2", Role.VIEWER).json() == first.json()


# --- refused uploads ---------------------------------------------------------------------------


def test_garbage_onnx_is_refused_with_the_reason_and_nothing_is_stored(api: Api, tmp_path: Path) -> None:
    refused = upload(api, "digits", b"this is not an onnx model")
    detail = assert_error(refused, 422, "invalid_argument")["detail"]
    assert detail.startswith("model: not a usable ONNX model: ")
    assert api.call("GET", "/api/v1/models", Role.VIEWER).json()["total"] == 0
    blobs = tmp_path / "data" / "blobs"
    assert not list((blobs / "tmp").iterdir()) and not (blobs / "sha256").exists()


def test_dataset_that_does_not_fit_the_model_inputs_is_refused(
    api: Api, sample: SavedSample, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 32), dtype=np.float32))
    refused = upload(api, "digits", sample.model_path.read_bytes(), validation=wrong.read_bytes())
    detail = assert_error(refused, 422, "invalid_argument")["detail"]
    assert detail == "validation: pixels: axis 1 is 32, model expects 64"

    np.savez(wrong, images=np.zeros((4, 64), dtype=np.float32))
    refused = upload(api, "digits", sample.model_path.read_bytes(), calibration=wrong.read_bytes())
    assert (
        "missing ['pixels'], unknown ['images']" in assert_error(refused, 422, "invalid_argument")["detail"]
    )
    assert api.call("GET", "/api/v1/models", Role.VIEWER).json()["total"] == 0


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "dot.ted", "x" * 65])
def test_bad_model_name_is_refused(api: Api, sample: SavedSample, name: str) -> None:
    refused = upload(api, name, sample.model_path.read_bytes())
    assert refused.status_code in (400, 422), refused.text
    assert refused.json()["error"] in ("invalid_request", "invalid_argument")


def test_bad_version_is_refused(api: Api, sample: SavedSample) -> None:
    refused = upload(api, "digits", sample.model_path.read_bytes(), version="1/2")
    assert assert_error(refused, 422, "invalid_argument")["detail"].startswith("version: ")


def test_upload_without_a_model_file_is_a_bad_request(api: Api) -> None:
    response = api.call("POST", "/api/v1/models", Role.OPERATOR, data={"name": "digits"})
    assert_error(response, 400, "invalid_request")


def test_upload_over_the_body_limit_is_refused(tmp_path: Path, sample: SavedSample) -> None:
    for small in _api(tmp_path, max_upload_bytes=4096):
        refused = upload(small, "digits", sample.model_path.read_bytes())
        assert_error(refused, 413, "request_too_large")
        assert small.call("GET", "/api/v1/models", Role.VIEWER).json()["total"] == 0


def test_viewer_cannot_upload_and_unknown_models_are_404(api: Api, sample: SavedSample) -> None:
    assert_error(upload(api, "digits", sample.model_path.read_bytes(), role=Role.VIEWER), 403, "forbidden")
    assert api.call("GET", "/api/v1/models", Role.VIEWER).json()["total"] == 0
    assert_error(api.call("GET", "/api/v1/models/nope/versions", Role.VIEWER), 404, "not_found")
    assert_error(api.call("GET", "/api/v1/models/nope/versions/1", Role.VIEWER), 404, "not_found")
    assert_error(api.call("GET", "/api/v1/models/nope/versions/1/download", Role.VIEWER), 404, "not_found")


def test_upload_is_audited_with_who_and_what(api: Api, sample: SavedSample) -> None:
    body = upload(api, "digits", sample.model_path.read_bytes()).json()
    entry = api.call("GET", "/api/v1/audit", Role.ADMIN).json()["items"][0]
    assert entry["action"] == "model.uploaded" and entry["target"] == "model:digits/1"
    assert entry["actor"] == body["created_by"] and entry["actor_name"] == "operator"
    assert entry["detail"] == {"sha256": body["onnx_sha256"], "size": body["onnx_size"]}


# --- CLI ---------------------------------------------------------------------------------------


def test_models_push_and_list_from_the_cli(tmp_path: Path, sample: SavedSample) -> None:
    def edgefabric(*argv: str) -> subprocess.CompletedProcess[str]:
        env = _env(EDGEFABRIC_URL=running.api, EDGEFABRIC_TOKEN=running.value("admin token"))
        return subprocess.run(
            ["edgefabric", *argv], capture_output=True, text=True, timeout=60, check=False, env=env
        )

    with ControlPlane(tmp_path / "data", "--no-advertise") as running:
        pushed = edgefabric(
            "models", "push", str(sample.model_path), "--name", "digits",
            "--calibration", str(sample.calibration_path), "--json",
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)["calibration_sha256"] is not None

        again = edgefabric("models", "push", str(sample.model_path), "--name", "digits", "--version", "1")
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert "HTTP 409 conflict" in again.stderr

        listed = edgefabric("models", "list")
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()
        assert header.split() == ["NAME", "LATEST", "VERSIONS", "UPDATED"]
        assert row.split()[:3] == ["digits", "1", "1"]
        assert running.stop() == 0


def test_multipart_body_streams_exactly_its_declared_size_with_progress(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(bytes(range(256)) * 4000)  # ~1 MiB: several chunks
    body = MultipartBody({"name": "digits"}, {"model": model})
    seen: list[tuple[int, int]] = []
    data = b"".join(body.chunks(lambda sent, total: seen.append((sent, total))))
    assert len(data) == body.size and seen[-1] == (body.size, body.size) and len(seen) > 3
    assert body.content_type.startswith("multipart/form-data; boundary=")
    assert model.read_bytes() in data and b'name="name"\r\n\r\ndigits\r\n' in data
