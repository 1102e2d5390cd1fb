"""The demo's two versions of one digits classifier: v1 a good model, v2 the same model made far heavier.

v1 is `digits_mlp`, trained in numpy on scikit-learn's bundled digits. v2 keeps v1's layers and adds a
convolutional branch (the 64 pixels projected onto a 64x64 map, `BALLAST_CONVS` 3x3 convolutions of
`BALLAST_CHANNELS` channels, global average pooling) whose output joins the logits through a head of
weights around 1e-3. It classifies as v1 does, so the compiler's validation, the signing, the agent's
acceptance test, the error-rate and the latency-budget gates all pass; but every image costs
thousands of times v1's multiply-adds. That is the regression the rollout's latency-regression gate is
for, and it reaches the devices through the real pipeline: nothing is tampered with after signing.

Invariants:
- Deterministic: one seed gives the same graphs and data sets.
- Both versions take `INPUT_NAME` float32 [N, 64] in [0, 1] and answer "logits" float32 [N, 10].
- The 540 held-out validation images are split: the first `VALIDATION_SAMPLES` go to the compiler's
  validation gate; the rest (`DemoModels.check_pixels`) are seen by neither training nor compilation,
  and the demo's inference checks use only them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from model_compiler.sample_models import LABELS_KEY, OPSET, SavedSample, digits_mlp

INPUT_NAME = "pixels"
CALIBRATION_SAMPLES = 100
VALIDATION_SAMPLES = 200
BALLAST_MAP_SIZE = 64
BALLAST_CHANNELS = 32
BALLAST_CONVS = 5
_BALLAST_HEAD_SCALE = 1e-3


@dataclass(frozen=True, eq=False)
class DemoModels:
    """v1 with the data sets of both versions (numpy arrays: compared by identity)."""

    v1: onnx.ModelProto
    reference_accuracy: float
    """v1's FP32 accuracy on the 540 held-out validation images (onnxruntime)."""
    calibration_pixels: NDArray[np.float32]
    validation_pixels: NDArray[np.float32]
    validation_labels: NDArray[np.int64]
    check_pixels: NDArray[np.float32]
    check_labels: NDArray[np.int64]
    all_held_out_pixels: NDArray[np.float32]
    v1_macs: int
    """Multiply-adds per image."""

    def save(self, model: onnx.ModelProto, directory: Path) -> SavedSample:
        """Write `model` as `model.onnx` with `calibration.npz` and `validation.npz` into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        saved = SavedSample(
            model_path=directory / "model.onnx",
            calibration_path=directory / "calibration.npz",
            validation_path=directory / "validation.npz",
        )
        onnx.save_model(model, saved.model_path)
        np.savez(saved.calibration_path, allow_pickle=False, **{INPUT_NAME: self.calibration_pixels})
        validation: dict[str, NDArray[Any]] = {
            INPUT_NAME: self.validation_pixels,
            LABELS_KEY: self.validation_labels,
        }
        np.savez(saved.validation_path, allow_pickle=False, **validation)
        return saved


@dataclass(frozen=True, eq=False)
class HeavierModel:
    """v2: v1 with the ballast branch."""

    model: onnx.ModelProto
    macs: int
    """Multiply-adds per image."""
    top1_agreement: float
    """Share of the 540 held-out images on which v2's FP32 top-1 class is v1's (onnxruntime)."""


def train_v1(seed: int = 0) -> DemoModels:
    """Train v1 (about 2 s on two cores) and split its held-out images."""
    # Small matrices: numpy's BLAS with one thread per core was 8x slower than one thread on 2 cores.
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=1):
        sample = digits_mlp(seed)
    pixels = sample.validation[INPUT_NAME]
    labels = sample.validation[LABELS_KEY]
    return DemoModels(
        v1=sample.model,
        reference_accuracy=sample.reference_accuracy,
        calibration_pixels=sample.calibration[INPUT_NAME][:CALIBRATION_SAMPLES],
        validation_pixels=pixels[:VALIDATION_SAMPLES],
        validation_labels=labels[:VALIDATION_SAMPLES],
        check_pixels=pixels[VALIDATION_SAMPLES:],
        check_labels=labels[VALIDATION_SAMPLES:],
        all_held_out_pixels=pixels,
        v1_macs=_macs(sample.model),
    )


def heavier_v2(models: DemoModels, seed: int = 0) -> HeavierModel:
    """v1 plus the ballast branch, with its multiply-adds and its agreement with v1."""
    v2 = _with_ballast(models.v1, np.random.default_rng(seed))
    pixels = models.all_held_out_pixels
    return HeavierModel(
        model=v2,
        macs=_macs(v2),
        top1_agreement=float(np.mean(_top1(v2, pixels) == _top1(models.v1, pixels))),
    )


def _with_ballast(v1: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """v1's graph plus the convolutional branch, added to its logits."""
    nodes: list[onnx.NodeProto] = []
    for node in v1.graph.node:
        copied = onnx.NodeProto()
        copied.CopyFrom(node)
        copied.output[:] = ["logits.v1" if name == "logits" else name for name in copied.output]
        nodes.append(copied)
    size, channels = BALLAST_MAP_SIZE, BALLAST_CHANNELS
    initializers: list[onnx.TensorProto] = [*v1.graph.initializer]

    def weight(name: str, values: NDArray[Any]) -> str:
        initializers.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    projection = weight("ballast.project", rng.standard_normal((64, size * size)) / 8.0)
    shape = "ballast.shape"
    initializers.append(numpy_helper.from_array(np.array([-1, 1, size, size], np.int64), shape))
    nodes += [
        helper.make_node("MatMul", [INPUT_NAME, projection], ["ballast.flat"]),
        helper.make_node("Reshape", ["ballast.flat", shape], ["ballast.map0"]),
    ]
    in_channels = 1
    for i in range(BALLAST_CONVS):
        he_normal = rng.standard_normal((channels, in_channels, 3, 3)) * np.sqrt(2.0 / (in_channels * 9))
        conv_weight = weight(f"ballast.conv{i}.weight", he_normal)
        conv_bias = weight(f"ballast.conv{i}.bias", np.zeros(channels))
        nodes += [
            helper.make_node(
                "Conv", [f"ballast.map{i}", conv_weight, conv_bias], [f"ballast.conv{i}"], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [f"ballast.conv{i}"], [f"ballast.map{i + 1}"]),
        ]
        in_channels = channels
    head = weight("ballast.head", rng.standard_normal((channels, 10)) * _BALLAST_HEAD_SCALE)
    nodes += [
        helper.make_node("GlobalAveragePool", [f"ballast.map{BALLAST_CONVS}"], ["ballast.pooled"]),
        helper.make_node("Flatten", ["ballast.pooled"], ["ballast.features"], axis=1),
        helper.make_node("MatMul", ["ballast.features", head], ["ballast.logits"]),
        helper.make_node("Add", ["logits.v1", "ballast.logits"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "digits", [*v1.graph.input], [*v1.graph.output], initializer=initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=v1.ir_version,
        producer_name="edgefabric-demo",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _macs(model: onnx.ModelProto) -> int:
    """Multiply-adds per image of the MatMul and Conv nodes (the only costly ones here; every Conv is
    the ballast's, stride 1 and padded, so it runs over the whole `BALLAST_MAP_SIZE` map)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "MatMul":
            rows, columns = shapes[node.input[1]]
            total += rows * columns
        elif node.op_type == "Conv":
            out_channels, in_channels, height, width = shapes[node.input[1]]
            total += BALLAST_MAP_SIZE**2 * out_channels * in_channels * height * width
    return total


def _top1(model: onnx.ModelProto, pixels: NDArray[np.float32]) -> NDArray[np.int64]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {INPUT_NAME: pixels})
    top1: NDArray[np.int64] = np.asarray(logits).argmax(axis=1)
    return top1
