"""Calibration and validation samples: `.npz` files mapping input names to arrays.

The first axis of every array is the sample; a validation file may add `labels` (int, one per
sample). Files are read with `allow_pickle=False`: no pickle ever crosses into the compiler.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_compiler.errors import DatasetError
from protocols.manifest import TensorSpec

LABELS = "labels"


@dataclass(frozen=True, slots=True)
class Samples:
    """Per-input arrays with the same number of samples, plus optional labels."""

    inputs: dict[str, NDArray[Any]]
    labels: NDArray[Any] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, indices: slice) -> Samples:
        labels = None if self.labels is None else self.labels[indices]
        return Samples({k: v[indices] for k, v in self.inputs.items()}, labels)

    def batches(self, batch_size: int) -> Iterator[dict[str, NDArray[Any]]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}

    def split(self, holdout_fraction: float) -> tuple[Samples, Samples]:
        """(calibration, held-out validation): the last `holdout_fraction` of the samples."""
        cut = max(1, int(len(self) * (1 - holdout_fraction)))
        return self.take(slice(0, cut)), self.take(slice(cut, None))


def load_samples(path: Path, model_inputs: tuple[TensorSpec, ...]) -> Samples:
    """Read `path` and check it against the model's inputs; `DatasetError` says what is off."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetError(path, f"not a readable .npz without pickled objects: {e}") from e
    labels = arrays.pop(LABELS, None)
    expected = {spec.name: spec for spec in model_inputs}
    missing, unknown = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unknown:
        raise DatasetError(
            path,
            f"arrays must be the model inputs {sorted(expected)} (+ optional labels); "
            f"missing {missing}, unknown {unknown}",
        )
    counts = {name: len(array) for name, array in arrays.items()}
    if labels is not None:
        counts[LABELS] = len(labels)
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise DatasetError(path, f"every array needs the same non-zero sample count, got {counts}")
    converted: dict[str, NDArray[Any]] = {}
    for name, array in arrays.items():
        spec = expected[name]
        if array.ndim != len(spec.shape):
            raise DatasetError(path, f"{name}: rank {array.ndim}, model expects shape {spec.shape}")
        for axis, (have, want) in enumerate(zip(array.shape[1:], spec.shape[1:], strict=True), start=1):
            if want is not None and have != want:
                raise DatasetError(path, f"{name}: axis {axis} is {have}, model expects {want}")
        converted[name] = array.astype(spec.dtype, copy=False)
    return Samples(converted, None if labels is None else labels.astype(np.int64))
