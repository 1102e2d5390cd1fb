"""Small real sample models trained on scikit-learn's bundled digits, for tests, demos and benchmarks.

Each builder returns a `SampleModel`: an ONNX graph plus the calibration and validation sets it was made
with and its FP32 reference accuracy, so a compile pass (quantisation, conversion) can be judged on a
model whose accuracy means something. Nothing is downloaded: `sklearn.datasets.load_digits` ships the
1797 8x8 images inside the package. Training is numpy only (features and the reference accuracy come
from onnxruntime) and takes under a second per model on two cores.

Invariants:

- Graphs use standard ONNX operators only (default domain), opset 17, IR version 9, a dynamic batch
  dimension named "N", float32 inputs with pixel values scaled to [0, 1] and a float32 output "logits"
  of shape [N, 10]. They pass `onnx.checker.check_model(..., full_check=True)`.
- The split is stratified by digit and depends only on the seed, not on the model: for one seed every
  builder validates on the same 540 held-out images, never used for training. Calibration holds 1000
  images drawn (stratified) from the training part.
- The same seed gives bit-identical weights, splits and `reference_accuracy` (same machine and library
  versions: training sums run in a fixed order, onnxruntime on one thread).
- `reference_accuracy` is measured with onnxruntime on the validation set, not with the training code.
- `calibration` maps the input name to float32 [1000, ...]; `validation` maps the input name to float32
  [540, ...] and "labels" to int64 [540]. `SampleModel.save` writes them with `np.savez` (no pickles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from model_compiler.errors import MissingToolchainError

OPSET = 17
IR_VERSION = 9
BATCH_DIM = "N"
CLASS_COUNT = 10
VALIDATION_SIZE = 540
CALIBRATION_SIZE = 1000
LABELS_KEY = "labels"

Floats = NDArray[np.float32]
Labels = NDArray[np.int64]


@dataclass(frozen=True)
class SavedSample:
    """Where `SampleModel.save` wrote the model and its data sets."""

    model_path: Path
    calibration_path: Path
    validation_path: Path


@dataclass(frozen=True, eq=False)
class SampleModel:
    """A trained ONNX model with the data it was calibrated and validated on.

    Compared by identity (`eq=False`): its fields hold numpy arrays, which have no single truth value.
    """

    model: onnx.ModelProto
    input_name: str
    calibration: dict[str, NDArray[Any]]
    validation: dict[str, NDArray[Any]]
    reference_accuracy: float

    def save(self, directory: Path) -> SavedSample:
        """Write `model.onnx`, `calibration.npz` and `validation.npz` into `directory` (created if needed)."""
        directory.mkdir(parents=True, exist_ok=True)
        saved = SavedSample(
            model_path=directory / "model.onnx",
            calibration_path=directory / "calibration.npz",
            validation_path=directory / "validation.npz",
        )
        onnx.save_model(self.model, saved.model_path)
        np.savez(saved.calibration_path, allow_pickle=False, **self.calibration)
        np.savez(saved.validation_path, allow_pickle=False, **self.validation)
        return saved


@dataclass(frozen=True, eq=False)
class _Digits:
    train_pixels: Floats  # [T, 64] in [0, 1]
    train_labels: Labels
    calibration_pixels: Floats  # [1000, 64], a subset of the training part
    validation_pixels: Floats  # [540, 64], held out
    validation_labels: Labels


def digits_cnn(seed: int = 0) -> SampleModel:
    """Conv(1->16)+Relu, Conv(16->32, stride 2)+Relu, Flatten, Gemm(512->10) on "image" [N, 1, 8, 8].

    The convolutions keep their seeded He-initialised weights as fixed random features (an extreme
    learning machine); only the Gemm head is trained, by softmax regression on those features as
    onnxruntime computes them from the feature sub-graph.
    """
    digits = _load_digits(seed)
    rng = _weight_rng(seed)
    conv1_weight = _he_normal(rng, (16, 1, 3, 3))
    conv2_weight = _he_normal(rng, (32, 16, 3, 3))
    conv_initializers = [
        numpy_helper.from_array(conv1_weight, "conv1.weight"),
        numpy_helper.from_array(np.zeros(16, np.float32), "conv1.bias"),
        numpy_helper.from_array(conv2_weight, "conv2.weight"),
        numpy_helper.from_array(np.zeros(32, np.float32), "conv2.bias"),
    ]
    feature_nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node(
            "Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("Flatten", ["relu2"], ["features"], axis=1),
    ]
    image = _tensor_info("image", [BATCH_DIM, 1, 8, 8])
    feature_model = _make_model(
        feature_nodes, conv_initializers, image, _tensor_info("features", [BATCH_DIM, 512])
    )
    features = _run(feature_model, "image", _as_images(digits.train_pixels))

    head_weight, head_bias = _train_softmax_head(features, digits.train_labels)
    head_node = helper.make_node("Gemm", ["features", "head.weight", "head.bias"], ["logits"], transB=1)
    model = _make_model(
        [*feature_nodes, head_node],
        [
            *conv_initializers,
            numpy_helper.from_array(head_weight.T.copy(), "head.weight"),
            numpy_helper.from_array(head_bias, "head.bias"),
        ],
        image,
        _logits_info(),
    )
    return _sample(model, "image", digits, _as_images)


def digits_mlp(seed: int = 0) -> SampleModel:
    """MatMul+Add+Relu (64->128), MatMul+Add (128->10) on "pixels" [N, 64], trained fully with Adam."""
    digits = _load_digits(seed)
    weights = _train_mlp(digits.train_pixels, digits.train_labels, _weight_rng(seed))
    nodes = [
        helper.make_node("MatMul", ["pixels", "fc1.weight"], ["fc1.matmul"]),
        helper.make_node("Add", ["fc1.matmul", "fc1.bias"], ["fc1"]),
        helper.make_node("Relu", ["fc1"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "fc2.weight"], ["fc2.matmul"]),
        helper.make_node("Add", ["fc2.matmul", "fc2.bias"], ["logits"]),
    ]
    initializers = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    model = _make_model(nodes, initializers, _tensor_info("pixels", [BATCH_DIM, 64]), _logits_info())
    return _sample(model, "pixels", digits, lambda pixels: pixels)


# --- data ------------------------------------------------------------------------------------------


def _load_digits(seed: int) -> _Digits:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as e:
        raise MissingToolchainError("scikit-learn", "compiler") from e
    bunch = load_digits()
    pixels = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    validation, train = _stratified_split(labels, np.arange(labels.size), VALIDATION_SIZE, rng)
    calibration, _ = _stratified_split(labels, train, CALIBRATION_SIZE, rng)
    return _Digits(
        train_pixels=pixels[train],
        train_labels=labels[train],
        calibration_pixels=pixels[calibration],
        validation_pixels=pixels[validation],
        validation_labels=labels[validation],
    )


def _stratified_split(
    labels: Labels, indices: NDArray[np.intp], count: int, rng: np.random.Generator
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Split `indices` into `count` taken with each class's share (largest remainder) and the rest."""
    classes, sizes = np.unique(labels[indices], return_counts=True)
    quotas = sizes * count / indices.size
    taken_per_class = np.floor(quotas).astype(np.intp)
    shortfall = count - int(taken_per_class.sum())
    taken_per_class[np.argsort(-(quotas - taken_per_class), kind="stable")[:shortfall]] += 1
    taken: list[NDArray[np.intp]] = []
    for digit, quota in zip(classes, taken_per_class, strict=True):
        members = indices[labels[indices] == digit]
        taken.append(rng.permutation(members)[:quota])
    chosen = np.sort(np.concatenate(taken))
    return chosen, np.setdiff1d(indices, chosen)


def _as_images(pixels: Floats) -> Floats:
    return pixels.reshape(-1, 1, 8, 8)


# --- training --------------------------------------------------------------------------------------


def _weight_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> Floats:
    fan_in = int(np.prod(shape[1:]))
    weights: Floats = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return weights


def _softmax_gradient(logits: NDArray[np.float64], labels: Labels) -> NDArray[np.float64]:
    """d(mean cross-entropy)/d(logits)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    probabilities[np.arange(labels.size), labels] -= 1.0
    gradient: NDArray[np.float64] = probabilities / labels.size
    return gradient


def _train_softmax_head(features: Floats, labels: Labels) -> tuple[Floats, Floats]:
    """Softmax regression (L2, full-batch Adam) on standardised features, folded back to raw features."""
    mean = features.mean(axis=0, dtype=np.float64)
    scale = features.std(axis=0, dtype=np.float64) + 1e-3
    x = (features - mean) / scale
    weight = np.zeros((x.shape[1], CLASS_COUNT))
    bias = np.zeros(CLASS_COUNT)
    adam = _Adam([weight, bias], learning_rate=0.01)
    for _ in range(300):
        grad = _softmax_gradient(x @ weight + bias, labels)
        adam.step([x.T @ grad + 1e-3 * weight, grad.sum(axis=0)])
    raw_weight = weight / scale[:, None]
    raw_bias = bias - mean @ raw_weight
    return raw_weight.astype(np.float32), raw_bias.astype(np.float32)


def _train_mlp(pixels: Floats, labels: Labels, rng: np.random.Generator) -> dict[str, Floats]:
    x = pixels.astype(np.float64)
    w1 = rng.standard_normal((64, 128)) * np.sqrt(2.0 / 64)
    b1 = np.zeros(128)
    w2 = rng.standard_normal((128, CLASS_COUNT)) * np.sqrt(1.0 / 128)
    b2 = np.zeros(CLASS_COUNT)
    adam = _Adam([w1, b1, w2, b2], learning_rate=0.003)
    batch_size = 64
    for _ in range(40):
        order = rng.permutation(labels.size)
        for start in range(0, labels.size, batch_size):
            batch = order[start : start + batch_size]
            hidden = np.maximum(x[batch] @ w1 + b1, 0.0)
            grad_logits = _softmax_gradient(hidden @ w2 + b2, labels[batch])
            grad_hidden = (grad_logits @ w2.T) * (hidden > 0.0)
            adam.step(
                [
                    x[batch].T @ grad_hidden,
                    grad_hidden.sum(axis=0),
                    hidden.T @ grad_logits,
                    grad_logits.sum(axis=0),
                ]
            )
    named = {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2}
    return {name: value.astype(np.float32) for name, value in named.items()}


class _Adam:
    """Adam over float64 parameter arrays, updated in place."""

    def __init__(self, parameters: list[NDArray[np.float64]], learning_rate: float) -> None:
        self._parameters = parameters
        self._learning_rate = learning_rate
        self._first = [np.zeros_like(p) for p in parameters]
        self._second = [np.zeros_like(p) for p in parameters]
        self._steps = 0

    def step(self, gradients: list[NDArray[np.float64]]) -> None:
        self._steps += 1
        correction = np.sqrt(1 - 0.999**self._steps) / (1 - 0.9**self._steps)
        for parameter, first, second, grad in zip(
            self._parameters, self._first, self._second, gradients, strict=True
        ):
            first *= 0.9
            first += 0.1 * grad
            second *= 0.999
            second += 0.001 * grad * grad
            parameter -= self._learning_rate * correction * first / (np.sqrt(second) + 1e-8)


# --- graphs ----------------------------------------------------------------------------------------


def _tensor_info(name: str, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _logits_info() -> onnx.ValueInfoProto:
    return _tensor_info("logits", [BATCH_DIM, CLASS_COUNT])


def _make_model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    graph_input: onnx.ValueInfoProto,
    graph_output: onnx.ValueInfoProto,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "digits", [graph_input], [graph_output], initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgefabric",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, input_name: str, batch: Floats) -> Floats:
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingToolchainError("onnxruntime", "compiler") from e
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: the same sums in the same order, run after run
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (output,) = session.run(None, {input_name: batch})
    return np.asarray(output, dtype=np.float32)


def _sample(
    model: onnx.ModelProto, input_name: str, digits: _Digits, shape: Callable[[Floats], Floats]
) -> SampleModel:
    """Wrap a trained model with its data sets (pixels reshaped by `shape`) and its ORT accuracy."""
    validation_inputs = shape(digits.validation_pixels)
    predictions = _run(model, input_name, validation_inputs).argmax(axis=1)
    return SampleModel(
        model=model,
        input_name=input_name,
        calibration={input_name: shape(digits.calibration_pixels)},
        validation={input_name: validation_inputs, LABELS_KEY: digits.validation_labels},
        reference_accuracy=float(np.mean(predictions == digits.validation_labels)),
    )
