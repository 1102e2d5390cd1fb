"""Writing one artifact directory: model files, golden samples and `manifest.json`.

Invariant: the directory appears complete or not at all -- it is assembled in a temp dir next to
its final place and renamed in; every file is listed in the manifest with SHA-256 and length.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from model_compiler.passes import Build
from protocols.durable import fsync_directory, write_atomic
from protocols.manifest import MANIFEST_FILENAME, ArtifactFile, ArtifactManifest


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


def publish_directory(staging: Path, target: Path) -> None:
    """Replace `target` with the finished `staging` directory."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    fsync_directory(target.parent)


def write_manifest(directory: Path, manifest: ArtifactManifest) -> None:
    import msgspec

    write_atomic(directory / MANIFEST_FILENAME, msgspec.json.format(msgspec.json.encode(manifest)))
