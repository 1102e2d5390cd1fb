"""Loading artifacts in their runtimes: accelerators that are absent, precision pinning, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardware_profiles.loader import load_profile
from hardware_profiles.runtimes import (
    ExecutionSettings,
    ModelLoadError,
    RuntimeUnavailableError,
    open_session,
    settings_for,
)
from model_compiler.sample_models import SavedSample, digits_mlp


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("mlp"))


def test_absent_gpu_provider_is_refused_unless_a_cpu_equivalent_is_allowed(mlp: SavedSample) -> None:
    settings = settings_for(load_profile("nvidia-gpu"))
    with pytest.raises(RuntimeUnavailableError, match="CUDAExecutionProvider"):
        open_session(mlp.model_path, settings)
    session = open_session(mlp.model_path, settings, allow_cpu_equivalent=True)
    assert session.is_cpu_equivalent and "CPUExecutionProvider" in session.description


def test_absent_openvino_device_falls_back_to_cpu_f32_only_when_allowed(mlp: SavedSample) -> None:
    settings = settings_for(load_profile("intel-npu"))
    with pytest.raises(RuntimeUnavailableError, match="NPU"):
        open_session(mlp.model_path, settings)
    session = open_session(mlp.model_path, settings, allow_cpu_equivalent=True)
    assert session.is_cpu_equivalent and "CPU (f32)" in session.description


def test_openvino_and_onnxruntime_agree_on_the_same_model(mlp: SavedSample) -> None:
    pixels = np.load(mlp.validation_path)["pixels"][:32]
    ort = open_session(mlp.model_path, settings_for(load_profile("cpu-x86_64")))
    ov = open_session(mlp.model_path, settings_for(load_profile("intel-cpu-openvino")))
    assert "(f32)" in ov.description  # pinned, never the device default (bf16 on some CPUs)
    np.testing.assert_allclose(
        ov.run({"pixels": pixels})["logits"], ort.run({"pixels": pixels})["logits"], atol=1e-3
    )
    assert [s.name for s in ov.inputs] == [s.name for s in ort.inputs] == ["pixels"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tflite"])
def test_a_corrupt_model_file_is_a_load_error_naming_the_file(tmp_path: Path, runtime: str) -> None:
    broken = (
        tmp_path / {"onnxruntime": "model.onnx", "openvino": "model.xml", "tflite": "model.tflite"}[runtime]
    )
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError, match=broken.name):
        open_session(broken, ExecutionSettings(runtime=runtime))  # type: ignore[arg-type]
