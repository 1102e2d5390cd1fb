"""ResNet-18- and BERT-base-shaped digits classifiers for the compiler benchmark (`compile.py`).

Both are built from standard ONNX operators (opset 17, IR 9, dynamic batch "N", output "logits"
[N, 10]) and trained the way `model_compiler.sample_models.digits_cnn` is: the body keeps seeded
random weights as fixed features and only the classifier head (a Gemm) is trained, by softmax
regression in numpy on the features onnxruntime computes. Nothing is downloaded; the data is
scikit-learn's bundled digits with the sample models' split (same 540 held-out images for one seed).

- `resnet18_digits`: the ResNet-18 topology (7x7/2 stem + max-pool, 4 stages of 2 BasicBlocks with
  64/128/256/512 channels, 1x1/2 projection shortcuts, residual Adds, global average pool, Gemm
  head) on "image" [N, 3, S, S]: the 8x8 digit upsampled bilinearly to S x S, grey copied to 3
  channels, values in [0, 1]. Conv weights are He-initialised; each conv is followed by a BatchNorm
  (gamma 1, beta 0) whose statistics are measured on calibration images, layer by layer, and folded
  into the conv's weight and bias -- so activations stay near unit scale, and biases and per-channel
  weight scales are uneven, as in a real BN-folded network.
- `bert_digits`: a post-LN BERT encoder (MatMul/Add, Reshape/Transpose heads, scaled dot product
  with an additive padding mask, Softmax, erf-GELU FFN, LayerNormalization) on "input_ids" int64
  [N, seq]: [CLS] (101), the 64 pixels as tokens 1 + intensity (0..16), then [PAD] (0). Word and
  position embeddings and all encoder weights are random (std 0.02, Q/K 0.06: large enough that
  attention is not uniform); the head is a Gemm on the mean-pooled last hidden state.

The StandardScaler of the head's training is folded into the Gemm (as in the sample models), which
gives the head the uneven weight scales that made NNCF's INT8 collapse on BERT (research note 2b).

Invariants: every loop is bounded by a count; the same arguments give the same weights and data
(ORT on fixed thread counts); `reference_accuracy` is measured with onnxruntime on the validation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from model_compiler.sample_models import (
    BATCH_DIM,
    IR_VERSION,
    LABELS_KEY,
    OPSET,
    SampleModel,
    _Digits,
    _he_normal,
    _load_digits,
    _stratified_split,
    _train_softmax_head,
    _weight_rng,
)

Floats = NDArray[np.float32]
CLS_TOKEN, PAD_TOKEN = 101, 0
BN_EPSILON = 1e-5
RESNET_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)


@dataclass(frozen=True, slots=True)
class BertShape:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    seq_len: int = 128
    vocab: int = 30522


# --- shared --------------------------------------------------------------------------------------


def _session(model: onnx.ModelProto, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _run_batched(
    model: onnx.ModelProto, input_name: str, inputs: NDArray[np.generic], threads: int, batch: int = 16
) -> Floats:
    """The model's first output for every row of `inputs`, in batches (bounded by the row count)."""
    session = _session(model, threads)
    chunks = [
        np.asarray(session.run(None, {input_name: inputs[start : start + batch]})[0], dtype=np.float32)
        for start in range(0, len(inputs), batch)
    ]
    return np.concatenate(chunks)


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    graph_input: onnx.ValueInfoProto,
    output_name: str,
    output_shape: list[str | int] | None,
    *,
    check: bool = True,
) -> onnx.ModelProto:
    graph_output = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)
    graph = helper.make_graph(nodes, "digits", [graph_input], [graph_output], initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgefabric",
    )
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _with_head(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    graph_input: onnx.ValueInfoProto,
    features_name: str,
    features: Floats,
    labels: NDArray[np.int64],
) -> onnx.ModelProto:
    weight, bias = _train_softmax_head(features, labels)
    head = helper.make_node("Gemm", [features_name, "head.weight", "head.bias"], ["logits"], transB=1)
    return _model(
        [*nodes, head],
        [
            *initializers,
            numpy_helper.from_array(weight.T.copy(), "head.weight"),
            numpy_helper.from_array(bias, "head.bias"),
        ],
        graph_input,
        "logits",
        [BATCH_DIM, 10],
    )


def _sample(
    model: onnx.ModelProto,
    input_name: str,
    calibration: NDArray[np.generic],
    validation: NDArray[np.generic],
    labels: NDArray[np.int64],
    threads: int,
) -> SampleModel:
    predictions = _run_batched(model, input_name, validation, threads).argmax(axis=1)
    return SampleModel(
        model=model,
        input_name=input_name,
        calibration={input_name: calibration},
        validation={input_name: validation, LABELS_KEY: labels},
        reference_accuracy=float(np.mean(predictions == labels)),
    )


def _subset(
    digits: _Digits, validation_count: int, calibration_count: int, train_count: int, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Stratified (validation, calibration, train) index subsets of the sample models' split."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])

    def pick(labels: NDArray[np.int64], count: int) -> NDArray[np.intp]:
        everything = np.arange(labels.size)
        if count >= labels.size:
            return everything
        return _stratified_split(labels, everything, count, rng)[0]

    calibration_labels = np.zeros(len(digits.calibration_pixels), np.int64)  # unlabelled: plain prefix
    return (
        pick(digits.validation_labels, validation_count),
        pick(calibration_labels, calibration_count)[:calibration_count],
        pick(digits.train_labels, train_count),
    )


# --- ResNet-18 -----------------------------------------------------------------------------------


def upsample_digits(pixels: Floats, size: int) -> Floats:
    """[n, 64] pixels in [0, 1] -> [n, 3, size, size] (bilinear, half-pixel centres, grey in 3 channels)."""
    centres = (np.arange(size) + 0.5) * 8 / size - 0.5
    low = np.clip(np.floor(centres).astype(int), 0, 7)
    high = np.clip(low + 1, 0, 7)
    frac = np.clip(centres - np.floor(centres), 0.0, 1.0)
    matrix = np.zeros((size, 8))
    np.add.at(matrix, (np.arange(size), low), 1 - frac)
    np.add.at(matrix, (np.arange(size), high), frac)
    grey = np.einsum("si,nij,tj->nst", matrix, pixels.reshape(-1, 8, 8).astype(np.float64), matrix)
    return np.repeat(grey[:, None], 3, axis=1).astype(np.float32)


class _ResNetBuilder:
    """Appends nodes in topological order; each conv's BatchNorm is measured on the images so far."""

    def __init__(self, rng: np.random.Generator, images: Floats, threads: int) -> None:
        self.rng = rng
        self.images = images
        self.threads = threads
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.input = helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, [BATCH_DIM, 3, *images.shape[2:]]
        )

    def conv_bn(self, x: str, name: str, channels: tuple[int, int], kernel: int, stride: int) -> str:
        c_in, c_out = channels
        weight = _he_normal(self.rng, (c_out, c_in, kernel, kernel))
        pads = [kernel // 2] * 4
        node = helper.make_node(
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [name], name=name, pads=pads, strides=[stride] * 2
        )
        probe = _model(
            [*self.nodes, node],
            [
                *self.initializers,
                numpy_helper.from_array(weight, f"{name}.weight"),
                numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.bias"),
            ],
            self.input,
            name,
            None,
            check=False,
        )
        out = _run_batched(probe, "image", self.images, self.threads).astype(np.float64)
        mean, std = out.mean(axis=(0, 2, 3)), np.sqrt(out.var(axis=(0, 2, 3)) + BN_EPSILON)
        self.nodes.append(node)
        self.initializers += [
            numpy_helper.from_array((weight / std[:, None, None, None]).astype(np.float32), f"{name}.weight"),
            numpy_helper.from_array((-mean / std).astype(np.float32), f"{name}.bias"),
        ]
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def basic_block(self, x: str, name: str, channels: tuple[int, int], stride: int) -> str:
        c_in, c_out = channels
        y = self.op("Relu", [self.conv_bn(x, f"{name}.conv1", (c_in, c_out), 3, stride)], f"{name}.relu1")
        y = self.conv_bn(y, f"{name}.conv2", (c_out, c_out), 3, 1)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.conv_bn(x, f"{name}.downsample", (c_in, c_out), 1, stride)
        return self.op("Relu", [self.op("Add", [y, shortcut], f"{name}.add")], f"{name}.relu2")


def resnet18_digits(
    *,
    image_size: int = 224,
    calibration_count: int = 300,
    validation_count: int = 540,
    bn_images: int = 32,
    threads: int = 2,
    seed: int = 0,
) -> SampleModel:
    """ResNet-18 on upsampled digits, head trained on every training image (see module docstring)."""
    digits = _load_digits(seed)
    validation, calibration, _ = _subset(digits, validation_count, calibration_count, 0, seed)
    train_images = upsample_digits(digits.train_pixels, image_size)
    builder = _ResNetBuilder(_weight_rng(seed), train_images[:bn_images], threads)
    x = builder.conv_bn("image", "stem.conv", (3, 64), 7, 2)
    x = builder.op("Relu", [x], "stem.relu")
    x = builder.op("MaxPool", [x], "stem.maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, (c_out, stride) in enumerate(RESNET_STAGES, start=1):
        x = builder.basic_block(x, f"layer{stage}.0", (c_in, c_out), stride)
        x = builder.basic_block(x, f"layer{stage}.1", (c_out, c_out), 1)
        c_in = c_out
    x = builder.op("GlobalAveragePool", [x], "pool")
    builder.op("Flatten", [x], "features", axis=1)
    features_model = _model(builder.nodes, builder.initializers, builder.input, "features", [BATCH_DIM, 512])
    features = _run_batched(features_model, "image", train_images, threads)
    model = _with_head(
        builder.nodes, builder.initializers, builder.input, "features", features, digits.train_labels
    )
    return _sample(
        model,
        "image",
        upsample_digits(digits.calibration_pixels[calibration], image_size),
        upsample_digits(digits.validation_pixels[validation], image_size),
        digits.validation_labels[validation],
        threads,
    )


# --- BERT ----------------------------------------------------------------------------------------


def digit_tokens(pixels: Floats, seq_len: int) -> NDArray[np.int64]:
    """[n, 64] pixels in [0, 1] -> [n, seq_len] ids: [CLS], 1 + intensity (0..16) per pixel, [PAD]s."""
    if seq_len < 65:
        raise ValueError(f"seq_len must hold [CLS] and 64 pixels, got {seq_len}")
    ids = np.full((len(pixels), seq_len), PAD_TOKEN, np.int64)
    ids[:, 0] = CLS_TOKEN
    ids[:, 1:65] = 1 + np.rint(pixels * 16).astype(np.int64)
    return ids


class _BertBuilder:
    def __init__(self, rng: np.random.Generator, shape: BertShape) -> None:
        self.rng = rng
        self.shape = shape
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: NDArray[np.generic]) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def random(self, name: str, shape: tuple[int, ...], std: float) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], name: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def linear(self, x: str, name: str, sizes: tuple[int, int], std: float = 0.02) -> str:
        weight = self.random(f"{name}.weight", sizes, std)
        bias = self.random(f"{name}.bias", (sizes[1],), 0.02)
        return self.op("Add", [self.op("MatMul", [x, weight], f"{name}.matmul"), bias], name)

    def layer_norm(self, x: str, name: str) -> str:
        hidden = self.shape.hidden
        scale = self.const(f"{name}.scale", np.ones(hidden, np.float32))
        bias = self.const(f"{name}.bias", np.zeros(hidden, np.float32))
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=1e-12)

    def heads(self, x: str, name: str, perm: list[int]) -> str:
        s = self.shape
        split = self.const(f"{name}.shape", np.array([0, 0, s.heads, s.hidden // s.heads], np.int64))
        return self.op("Transpose", [self.op("Reshape", [x, split], f"{name}.split")], f"{name}.t", perm=perm)

    def layer(self, x: str, mask: str, i: int) -> str:
        s = self.shape
        p = f"layer{i}"
        q = self.heads(self.linear(x, f"{p}.query", (s.hidden, s.hidden), 0.06), f"{p}.q", [0, 2, 1, 3])
        k = self.heads(self.linear(x, f"{p}.key", (s.hidden, s.hidden), 0.06), f"{p}.k", [0, 2, 3, 1])
        v = self.heads(self.linear(x, f"{p}.value", (s.hidden, s.hidden)), f"{p}.v", [0, 2, 1, 3])
        scale = self.const(f"{p}.scale", np.array(1 / np.sqrt(s.hidden // s.heads), np.float32))
        scores = self.op("Mul", [self.op("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scaled")
        probs = self.op("Softmax", [self.op("Add", [scores, mask], f"{p}.masked")], f"{p}.probs", axis=-1)
        context = self.op(
            "Transpose", [self.op("MatMul", [probs, v], f"{p}.pv")], f"{p}.ctx.t", perm=[0, 2, 1, 3]
        )
        merge = self.const(f"{p}.merge", np.array([0, 0, s.hidden], np.int64))
        context = self.op("Reshape", [context, merge], f"{p}.ctx")
        attention = self.linear(context, f"{p}.attention.output", (s.hidden, s.hidden))
        x = self.layer_norm(self.op("Add", [x, attention], f"{p}.attention.residual"), f"{p}.attention.ln")
        inner = self.linear(x, f"{p}.ffn.in", (s.hidden, s.ffn))
        root2 = self.const(f"{p}.sqrt2", np.array(np.sqrt(2.0), np.float32))
        one = self.const(f"{p}.one", np.array(1.0, np.float32))
        half = self.const(f"{p}.half", np.array(0.5, np.float32))
        erf = self.op("Erf", [self.op("Div", [inner, root2], f"{p}.gelu.div")], f"{p}.gelu.erf")
        gelu = self.op("Mul", [self.op("Add", [erf, one], f"{p}.gelu.add"), inner], f"{p}.gelu.mul")
        gelu = self.op("Mul", [gelu, half], f"{p}.gelu")
        out = self.linear(gelu, f"{p}.ffn.out", (s.ffn, s.hidden))
        return self.layer_norm(self.op("Add", [x, out], f"{p}.ffn.residual"), f"{p}.ffn.ln")

    def encoder(self) -> str:
        s = self.shape
        words = self.random("embeddings.word", (s.vocab, s.hidden), 0.02)
        positions = self.random("embeddings.position", (s.seq_len, s.hidden), 0.02)
        x = self.op("Add", [self.op("Gather", [words, "input_ids"], "embeddings.gather"), positions], "embed")
        x = self.layer_norm(x, "embeddings.ln")
        pad = self.const("mask.pad", np.array(PAD_TOKEN, np.int64))
        masked, kept = (
            self.const("mask.off", np.array(-10000.0, np.float32)),
            self.const("mask.on", np.array(0.0, np.float32)),
        )
        is_pad = self.op("Equal", ["input_ids", pad], "mask.is_pad")
        additive = self.op("Where", [is_pad, masked, kept], "mask.additive")
        mask = self.op("Unsqueeze", [additive, self.const("mask.axes", np.array([1, 2], np.int64))], "mask")
        for i in range(s.layers):
            x = self.layer(x, mask, i)
        return self.op("ReduceMean", [x], "features", axes=[1], keepdims=0)


def bert_digits(
    *,
    shape: BertShape | None = None,
    calibration_count: int = 128,
    validation_count: int = 200,
    train_count: int = 800,
    threads: int = 2,
    seed: int = 0,
) -> SampleModel:
    """BERT-shaped encoder on digit token sequences, head trained on `train_count` images."""
    shape = shape or BertShape()
    if shape.hidden % shape.heads:
        raise ValueError(f"hidden {shape.hidden} is not a multiple of heads {shape.heads}")
    digits = _load_digits(seed)
    validation, calibration, train = _subset(digits, validation_count, calibration_count, train_count, seed)
    builder = _BertBuilder(_weight_rng(seed), shape)
    features_name = builder.encoder()
    graph_input = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH_DIM, shape.seq_len])
    features_model = _model(
        builder.nodes, builder.initializers, graph_input, features_name, [BATCH_DIM, shape.hidden]
    )
    tokens = digit_tokens(digits.train_pixels[train], shape.seq_len)
    features = _run_batched(features_model, "input_ids", tokens, threads)
    model = _with_head(
        builder.nodes, builder.initializers, graph_input, features_name, features, digits.train_labels[train]
    )
    return _sample(
        model,
        "input_ids",
        digit_tokens(digits.calibration_pixels[calibration], shape.seq_len),
        digit_tokens(digits.validation_pixels[validation], shape.seq_len),
        digits.validation_labels[validation],
        threads,
    )
