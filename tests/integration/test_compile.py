"""Compiling a real digits classifier for several profiles, through the library and the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_compiler.compiler import CompileRequest, compile_model
from model_compiler.errors import DatasetError, InvalidModelError
from model_compiler.golden import read_golden
from model_compiler.passes import Build, PassContext, onnxruntime_passes
from model_compiler.sample_models import SavedSample, digits_cnn, digits_mlp
from protocols.manifest import MANIFEST_FILENAME, manifest_decoder


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_cnn().save(tmp_path_factory.mktemp("cnn"))


def request(sample: SavedSample, out: Path, *profiles: str, **overrides: Any) -> CompileRequest:
    fields: dict[str, Any] = {
        "model_path": sample.model_path,
        "profiles": profiles,
        "out_dir": out,
        "model_name": "digits",
        "version": "1.0.0",
        "calibration_path": sample.calibration_path,
        "validation_path": sample.validation_path,
    } | overrides
    return CompileRequest(**fields)


def test_cnn_builds_for_cpu_openvino_and_gpu_with_complete_manifests(
    cnn: SavedSample, tmp_path: Path
) -> None:
    report = compile_model(request(cnn, tmp_path, "cpu-x86_64", "intel-cpu-openvino", "nvidia-gpu"))
    assert [r.status for r in report.results] == ["built", "built", "built"], [
        r.reason for r in report.results
    ]
    for result in report.results:
        directory = tmp_path / result.profile
        manifest = manifest_decoder.decode((directory / MANIFEST_FILENAME).read_bytes())
        assert (manifest.model, manifest.version, manifest.hw_profile) == ("digits", "1.0.0", result.profile)
        assert manifest.source_model_sha256 == hashlib.sha256(cnn.model_path.read_bytes()).hexdigest()
        for entry in manifest.files:
            data = (directory / entry.path).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry.sha256, entry.size_bytes)
        assert manifest.model_file in {f.path for f in manifest.files}
        assert manifest.validation.accuracy is not None and manifest.validation.accuracy > 0.9
        assert manifest.validation.top1_agreement >= 0.97
        assert manifest.host_latency.p95_ms >= manifest.host_latency.p50_ms > 0
        assert sum(manifest.reference_histogram.counts) == manifest.validation.samples
        inputs, outputs = read_golden(directory / manifest.acceptance.golden_file)
        assert set(inputs) == {"image"} and len(next(iter(outputs.values()))) == len(inputs["image"])
    by_profile = {r.profile: r.manifest for r in report.results if r.manifest}
    assert by_profile["cpu-x86_64"].precision == "int8"
    assert by_profile["intel-cpu-openvino"].model_file == "model.xml"
    assert by_profile["intel-cpu-openvino"].inference_precision_hint == "f32"
    gpu = by_profile["nvidia-gpu"]
    assert gpu.validation.is_cpu_equivalent and "CPU equivalent" in gpu.validation.validated_on
    assert gpu.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def test_gate_rejects_a_pass_that_corrupts_outputs_and_writes_nothing(
    cnn: SavedSample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pass = onnxruntime_passes.quantize_static_qdq

    def broken_quantizer(build: Build, context: PassContext) -> Build:
        """Quantizes, then scrambles every weight matrix (a deliberately broken pass)."""
        built = real_pass(build, context)
        assert built.onnx_path is not None
        model = onnx.load(str(built.onnx_path))
        rng = np.random.default_rng(1)
        for initializer in model.graph.initializer:
            if len(initializer.dims) >= 2:  # float or already-quantized int8 weights
                weights = onnx.numpy_helper.to_array(initializer)
                scrambled = rng.permutation(weights.reshape(-1)).reshape(weights.shape)
                initializer.CopyFrom(onnx.numpy_helper.from_array(scrambled, initializer.name))
        onnx.save(model, str(built.onnx_path))
        return built

    monkeypatch.setattr(onnxruntime_passes, "quantize_static_qdq", broken_quantizer)
    report = compile_model(request(cnn, tmp_path, "cpu-x86_64", "intel-cpu-openvino"))
    rejected, other = report.results
    assert rejected.status == "rejected" and other.status == "built"
    assert [a.recipe for a in rejected.attempts] == ["default", "conservative"]
    assert rejected.reason is not None and "top-1 agreement" in rejected.reason
    assert all(a.metrics is not None and a.metrics.top1_agreement < 0.9 for a in rejected.attempts)
    assert not (tmp_path / "cpu-x86_64").exists()


def test_missing_validation_uses_a_held_out_part_of_calibration(cnn: SavedSample, tmp_path: Path) -> None:
    report = compile_model(request(cnn, tmp_path, "cpu-x86_64", validation_path=None))
    (result,) = report.results
    assert result.status == "built" and result.manifest is not None
    assert result.manifest.validation.samples == 200 and result.manifest.validation.accuracy is None


def test_transformer_like_or_flagged_models_get_dynamic_quantization(tmp_path: Path) -> None:
    mlp = digits_mlp().save(tmp_path / "mlp")
    report = compile_model(request(mlp, tmp_path / "out", "cpu-x86_64", quantization="dynamic"))
    (result,) = report.results
    assert result.status == "built" and result.attempts[0].quantization == "dynamic"
    model = onnx.load(str(tmp_path / "out" / "cpu-x86_64" / "model.onnx"))
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}


def test_onnx_ml_operators_fail_clearly_off_onnxruntime(tmp_path: Path, cnn: SavedSample) -> None:
    scaler = helper.make_node(
        "Scaler", ["pixels"], ["scaled"], domain="ai.onnx.ml", scale=[1.0] * 64, offset=[0.0] * 64
    )
    weights = onnx.numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w"
    )
    matmul = helper.make_node("MatMul", ["scaled", "w"], ["logits"])
    graph = helper.make_graph(
        [scaler, matmul],
        "ml",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[weights],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "ml.onnx"))
    pixels = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    np.savez(tmp_path / "samples.npz", pixels=pixels)
    report = compile_model(
        CompileRequest(
            model_path=tmp_path / "ml.onnx",
            profiles=("intel-cpu-openvino", "cpu-x86_64"),
            out_dir=tmp_path / "out",
            model_name="ml",
            version="1",
            validation_path=tmp_path / "samples.npz",
        )
    )
    openvino, cpu = report.results
    assert (
        openvino.status == "failed"
        and openvino.reason == "intel-cpu-openvino: unsupported operator ai.onnx.ml.Scaler"
    )
    assert cpu.status == "built", cpu.reason  # onnxruntime runs ONNX-ML operators


def test_a_file_that_is_not_onnx_is_refused_before_any_profile(tmp_path: Path, cnn: SavedSample) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all")
    with pytest.raises(InvalidModelError, match=r"garbage\.onnx"):
        compile_model(request(cnn, tmp_path, "cpu-x86_64", model_path=garbage))


def test_samples_that_do_not_fit_the_model_are_refused(tmp_path: Path, cnn: SavedSample) -> None:
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((10, 64), np.float32))
    with pytest.raises(DatasetError, match="missing \\['image'\\]"):
        compile_model(request(cnn, tmp_path, "cpu-x86_64", calibration_path=tmp_path / "wrong.npz"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["edgefabric", *args], capture_output=True, text=True, timeout=300, check=False)


def test_cli_reports_each_profile_and_fails_when_one_did_not_build(cnn: SavedSample, tmp_path: Path) -> None:
    result = run_cli(
        "compile",
        "local",
        str(cnn.model_path),
        "--profile",
        "cpu-x86_64",
        "--profile",
        "tflite-arm",
        "--calibration",
        str(cnn.calibration_path),
        "--validation",
        str(cnn.validation_path),
        "--out",
        str(tmp_path),
        "--json",
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    statuses = {r["profile"]: (r["status"], r["reason"]) for r in report["results"]}
    assert statuses["cpu-x86_64"][0] == "built"
    assert (
        statuses["tflite-arm"][0] == "failed" and "edgefabric[tflite-compiler]" in statuses["tflite-arm"][1]
    )
    assert msgspec.json.decode((tmp_path / "compile-report.json").read_bytes())["model"] == "model"


def test_cli_prints_a_summary_table(cnn: SavedSample, tmp_path: Path) -> None:
    result = run_cli(
        "compile",
        "local",
        str(cnn.model_path),
        "--profile",
        "nvidia-gpu",
        "--validation",
        str(cnn.validation_path),
        "--out",
        str(tmp_path),
        "--model-name",
        "digits",
    )
    assert result.returncode == 0, result.stderr
    assert "PROFILE" in result.stdout and "nvidia-gpu" in result.stdout and "cpu-equivalent" in result.stdout


def test_cli_refuses_a_broken_model_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_text("nope")
    result = run_cli(
        "compile", "local", str(tmp_path / "bad.onnx"), "--profile", "cpu-x86_64", "--out", str(tmp_path)
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "bad.onnx" in result.stderr
