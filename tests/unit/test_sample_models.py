"""The digits sample models: valid standard ONNX, accurate, reproducible, saved without pickles, and run
the same on onnxruntime and OpenVINO."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn", reason="the sample models train on scikit-learn's bundled digits")

from model_compiler import sample_models  # noqa: E402
from model_compiler.errors import MissingToolchainError  # noqa: E402
from model_compiler.sample_models import SampleModel, digits_cnn, digits_mlp  # noqa: E402

BUILDERS: dict[str, Callable[[int], SampleModel]] = {"cnn": digits_cnn, "mlp": digits_mlp}
INPUT_SHAPES = {"cnn": ("image", (1, 8, 8)), "mlp": ("pixels", (64,))}
ACCURACY_TARGETS = {"cnn": 0.93, "mlp": 0.95}


@pytest.fixture(scope="module")
def samples() -> dict[str, SampleModel]:
    return {name: build(0) for name, build in BUILDERS.items()}


def _ort_logits(model_path: Path, input_name: str, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {input_name: batch})[0])


@pytest.mark.parametrize("name", BUILDERS)
def test_sample_model_is_standard_onnx_opset_17_with_a_dynamic_batch(
    samples: dict[str, SampleModel], name: str
) -> None:
    model = samples[name].model
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 9
    assert [(opset.domain, opset.version) for opset in model.opset_import] == [("", 17)]
    assert {node.domain for node in model.graph.node} == {""}
    (graph_input,) = model.graph.input
    input_name, sample_shape = INPUT_SHAPES[name]
    assert graph_input.name == samples[name].input_name == input_name
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N"
    assert tuple(dim.dim_value for dim in dims[1:]) == sample_shape
    assert [output.name for output in model.graph.output] == ["logits"]


def test_cnn_has_the_documented_layers(samples: dict[str, SampleModel]) -> None:
    graph = samples["cnn"].model.graph
    assert [node.op_type for node in graph.node] == ["Conv", "Relu", "Conv", "Relu", "Flatten", "Gemm"]
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    assert shapes["conv1.weight"] == (16, 1, 3, 3)
    assert shapes["conv2.weight"] == (32, 16, 3, 3)
    assert shapes["head.weight"] == (10, 512)


@pytest.mark.parametrize("name", BUILDERS)
def test_sample_model_reaches_its_accuracy_target_on_held_out_digits(
    samples: dict[str, SampleModel], name: str, tmp_path: Path
) -> None:
    sample = samples[name]
    assert sample.reference_accuracy >= ACCURACY_TARGETS[name]
    saved = sample.save(tmp_path)
    logits = _ort_logits(saved.model_path, sample.input_name, sample.validation[sample.input_name])
    assert logits.shape == (540, 10)
    accuracy = float(np.mean(logits.argmax(axis=1) == sample.validation["labels"]))
    assert accuracy == sample.reference_accuracy


@pytest.mark.parametrize("name", BUILDERS)
def test_same_seed_rebuilds_identical_weights_and_data(samples: dict[str, SampleModel], name: str) -> None:
    again = BUILDERS[name](0)
    first = samples[name]
    assert again.model.SerializeToString() == first.model.SerializeToString()
    for key, value in first.calibration.items():
        np.testing.assert_array_equal(again.calibration[key], value)
    for key, value in first.validation.items():
        np.testing.assert_array_equal(again.validation[key], value)
    assert again.reference_accuracy == first.reference_accuracy


def test_another_seed_gives_other_weights_and_another_split(samples: dict[str, SampleModel]) -> None:
    other = digits_mlp(1)
    first = samples["mlp"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in first.model.graph.initializer}
    for tensor in other.model.graph.initializer:
        assert not np.array_equal(onnx.numpy_helper.to_array(tensor), weights[tensor.name])
    assert not np.array_equal(other.validation["labels"], first.validation["labels"])
    assert other.reference_accuracy >= ACCURACY_TARGETS["mlp"]


@pytest.mark.parametrize("name", BUILDERS)
def test_saved_datasets_load_without_pickle_with_the_documented_keys(
    samples: dict[str, SampleModel], name: str, tmp_path: Path
) -> None:
    saved = samples[name].save(tmp_path / "nested" / name)
    input_name, sample_shape = INPUT_SHAPES[name]
    assert saved.model_path.name == "model.onnx"
    onnx.checker.check_model(onnx.load_model(saved.model_path), full_check=True)
    with np.load(saved.calibration_path, allow_pickle=False) as calibration:
        assert set(calibration.files) == {input_name}
        assert calibration[input_name].shape == (1000, *sample_shape)
        assert calibration[input_name].dtype == np.float32
        assert calibration[input_name].min() >= 0.0 and calibration[input_name].max() <= 1.0
    with np.load(saved.validation_path, allow_pickle=False) as validation:
        assert set(validation.files) == {input_name, "labels"}
        assert validation[input_name].shape == (540, *sample_shape)
        assert validation[input_name].dtype == np.float32
        assert validation["labels"].shape == (540,)
        assert validation["labels"].dtype == np.int64
        assert set(np.unique(validation["labels"]).tolist()) == set(range(10))


def test_split_is_stratified_and_validation_is_never_trained_on() -> None:
    digits = sample_models._load_digits(0)
    train_rows = {row.tobytes() for row in digits.train_pixels}  # the 1797 images are all distinct
    assert not any(row.tobytes() in train_rows for row in digits.validation_pixels)
    assert all(row.tobytes() in train_rows for row in digits.calibration_pixels)
    assert len(train_rows) + len(digits.validation_pixels) == 1797
    held_out = np.bincount(digits.validation_labels, minlength=10)
    everything = held_out + np.bincount(digits.train_labels, minlength=10)
    assert np.all(np.abs(held_out - 540 * everything / 1797) < 1.0)  # each digit's share, rounded


def test_both_models_validate_on_the_same_images_for_a_seed(samples: dict[str, SampleModel]) -> None:
    cnn, mlp = samples["cnn"], samples["mlp"]
    np.testing.assert_array_equal(cnn.validation["image"].reshape(-1, 64), mlp.validation["pixels"])
    np.testing.assert_array_equal(cnn.validation["labels"], mlp.validation["labels"])
    np.testing.assert_array_equal(cnn.calibration["image"].reshape(-1, 64), mlp.calibration["pixels"])


@pytest.mark.parametrize("name", BUILDERS)
def test_openvino_predicts_what_onnxruntime_predicts(
    samples: dict[str, SampleModel], name: str, tmp_path: Path
) -> None:
    openvino = pytest.importorskip("openvino")
    sample = samples[name]
    saved = sample.save(tmp_path)
    batch = sample.validation[sample.input_name]
    core = openvino.Core()
    compiled = core.compile_model(
        core.read_model(saved.model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    openvino_logits = np.asarray(compiled({sample.input_name: batch})[compiled.output("logits")])
    ort_logits = _ort_logits(saved.model_path, sample.input_name, batch)
    agreement = float(np.mean(openvino_logits.argmax(axis=1) == ort_logits.argmax(axis=1)))
    assert agreement >= 0.99
    np.testing.assert_allclose(openvino_logits, ort_logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", BUILDERS)
def test_missing_scikit_learn_names_the_extra_to_install(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingToolchainError) as raised:
        BUILDERS[name](0)
    assert raised.value.what == "scikit-learn"
    assert raised.value.extra == "compiler"
