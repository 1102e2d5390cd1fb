"""Golden samples: the inputs and expected outputs an artifact must reproduce on the device.

Shared by the compiler (writes them) and the agent's acceptance test (reads them); numpy only,
read with `allow_pickle=False`. Keys are `in.<input name>` and `out.<output name>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

GOLDEN_FILENAME = "golden.npz"


def write_golden(directory: Path, inputs: dict[str, NDArray[Any]], outputs: dict[str, NDArray[Any]]) -> None:
    arrays = {f"in.{k}": v for k, v in inputs.items()} | {f"out.{k}": v for k, v in outputs.items()}
    np.savez(directory / GOLDEN_FILENAME, **arrays)  # type: ignore[arg-type]


def read_golden(path: Path) -> tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]:
    """(inputs, expected outputs), never unpickling anything."""
    with np.load(path, allow_pickle=False) as archive:
        inputs = {k.removeprefix("in."): archive[k] for k in archive.files if k.startswith("in.")}
        outputs = {k.removeprefix("out."): archive[k] for k in archive.files if k.startswith("out.")}
    return inputs, outputs
