"""TFLite builds through onnx2tf, run in LiteRT. Needs the tflite-compiler extra (Python >= 3.12):
.ci/run runs these in their own virtual environment with `pytest -m tflite`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardware_profiles.runtimes import ExecutionSettings, open_session
from model_compiler.compiler import CompileRequest, compile_model
from model_compiler.golden import read_golden
from model_compiler.sample_models import digits_cnn
from protocols.manifest import MANIFEST_FILENAME, manifest_decoder

pytestmark = pytest.mark.tflite


def test_cnn_compiles_to_tflite_that_litert_runs_like_the_onnx_model(tmp_path: Path) -> None:
    sample = digits_cnn().save(tmp_path / "cnn")
    report = compile_model(
        CompileRequest(
            model_path=sample.model_path,
            profiles=("tflite-arm",),
            out_dir=tmp_path / "out",
            model_name="digits",
            version="1",
            calibration_path=sample.calibration_path,
            validation_path=sample.validation_path,
        )
    )
    (result,) = report.results
    assert result.status == "built", result.reason
    assert result.attempts[0].quantization == "tflite-full-int8"  # every emitted variant was run
    assert all(a.metrics is not None and a.metrics.samples == 540 for a in result.attempts)

    directory = tmp_path / "out" / "tflite-arm"
    manifest = manifest_decoder.decode((directory / MANIFEST_FILENAME).read_bytes())
    assert manifest.model_file == "model.tflite" and manifest.runtime == "tflite"
    assert manifest.input_permutations == {"image": (0, 2, 3, 1)}  # onnx2tf made the input NHWC
    assert manifest.inputs[0].shape == (1, 1, 8, 8)  # callers still feed the ONNX layout

    session = open_session(
        directory / manifest.model_file,
        ExecutionSettings(runtime="tflite", input_permutations=tuple(manifest.input_permutations.items())),
    )
    inputs, expected = read_golden(directory / manifest.acceptance.golden_file)
    for index in range(len(inputs["image"])):
        outputs = session.run({"image": inputs["image"][index : index + 1]})
        ((name, value),) = outputs.items()
        np.testing.assert_allclose(
            value, expected[name][index : index + 1], atol=manifest.acceptance.max_abs_error
        )
