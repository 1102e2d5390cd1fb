"""Writing one artifact directory: model files, golden samples and `manifest.json`.

Invariant: the directory appears complete or not at all -- it is assembled in a temp dir next to
its final place and renamed in; every file is listed in the manifest with SHA-256 and length.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_compiler.passes import Build
from protocols.durable import fsync_directory, write_atomic
from protocols.manifest import MANIFEST_FILENAME, ArtifactFile, ArtifactManifest

GOLDEN_FILENAME = "golden.npz"


def file_entry(directory: Path, relative: str) -> ArtifactFile:
    data = (directory / relative).read_bytes()
    return ArtifactFile(path=relative, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def emit_model(build: Build, directory: Path) -> tuple[str, list[str]]:
    """Write the built model into `directory`; return (entry file, every file written)."""
    directory.mkdir(parents=True, exist_ok=True)
    if build.ov_model is not None:
        import openvino

        openvino.save_model(
            build.ov_model, str(directory / "model.xml"), compress_to_fp16=build.compress_to_fp16
        )
        return "model.xml", ["model.xml", "model.bin"]
    if build.tflite_path is not None:
        shutil.copyfile(build.tflite_path, directory / "model.tflite")
        return "model.tflite", ["model.tflite"]
    if build.onnx_path is None:
        raise ValueError("nothing was built")
    shutil.copyfile(build.onnx_path, directory / "model.onnx")
    return "model.onnx", ["model.onnx"]


def write_golden(directory: Path, inputs: dict[str, NDArray[Any]], outputs: dict[str, NDArray[Any]]) -> None:
    """Golden inputs (`in.<name>`) and expected outputs (`out.<name>`) for on-device acceptance."""
    arrays = {f"in.{k}": v for k, v in inputs.items()} | {f"out.{k}": v for k, v in outputs.items()}
    np.savez(directory / GOLDEN_FILENAME, **arrays)  # type: ignore[arg-type]


def read_golden(path: Path) -> tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]:
    """(inputs, expected outputs) from a golden file, never unpickling anything."""
    with np.load(path, allow_pickle=False) as archive:
        inputs = {k.removeprefix("in."): archive[k] for k in archive.files if k.startswith("in.")}
        outputs = {k.removeprefix("out."): archive[k] for k in archive.files if k.startswith("out.")}
    return inputs, outputs


def publish_directory(staging: Path, target: Path) -> None:
    """Replace `target` with the finished `staging` directory."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    fsync_directory(target.parent)


def write_manifest(directory: Path, manifest: ArtifactManifest) -> None:
    import msgspec

    write_atomic(directory / MANIFEST_FILENAME, msgspec.json.format(msgspec.json.encode(manifest)))
