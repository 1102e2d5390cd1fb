"""`edgefabric keys` and `edgefabric release` as an operator runs them: real subprocesses, keys and files."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from protocols.codec import encode
from protocols.manifest import (
    AcceptanceSpec,
    ArtifactFile,
    ArtifactManifest,
    LatencyStats,
    OutputHistogram,
    TensorSpec,
    ValidationMetrics,
)

MODEL = "digits-cnn"
PROFILES = ("cpu-x86_64", "intel-cpu-openvino")


def edgefabric(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["edgefabric", *argv], capture_output=True, text=True, timeout=60, check=False)


def write_compile_output(out_dir: Path, version: str) -> Path:
    """What `edgefabric` compiles: one directory per profile with a model, golden samples, a manifest."""
    for profile in PROFILES:
        directory = out_dir / profile
        directory.mkdir(parents=True)
        contents = {"model.onnx": f"graph for {profile}".encode(), "golden.npz": b"PK\x05\x06" + bytes(18)}
        for name, data in contents.items():
            (directory / name).write_bytes(data)
        manifest = ArtifactManifest(
            model=MODEL,
            version=version,
            hw_profile=profile,
            runtime="onnxruntime",
            artifact_format="onnx",
            precision="int8",
            recipe="qdq-static",
            model_file="model.onnx",
            files=tuple(
                ArtifactFile(path=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
                for name, data in contents.items()
            ),
            inputs=(TensorSpec(name="image", dtype="float32", shape=(None, 1, 8, 8)),),
            outputs=(TensorSpec(name="logits", dtype="float32", shape=(None, 10)),),
            validation=ValidationMetrics(
                samples=540,
                top1_agreement=0.99,
                max_abs_error=0.05,
                cosine_similarity=0.999,
                validated_on="cpu",
            ),
            host_latency=LatencyStats(p50_ms=0.3, p95_ms=0.6, runs=200, measured_on="x86_64"),
            acceptance=AcceptanceSpec(
                golden_file="golden.npz", max_abs_error=0.1, min_top1_agreement=0.98, p95_latency_ms=5.0
            ),
            reference_histogram=OutputHistogram(kind="top1", counts=(54,) * 10),
            source_model_sha256="cd" * 32,
        )
        (directory / "manifest.json").write_bytes(encode(manifest))
    return out_dir


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    """A repository with release 1.0 of MODEL signed from `tmp_path/out`."""
    repo = tmp_path / "repo"
    assert edgefabric("keys", "init", "--repo", str(repo)).returncode == 0
    out_dir = write_compile_output(tmp_path / "out", "1.0")
    sign = edgefabric(
        "release", "sign", str(out_dir), "--repo", str(repo), "--model", MODEL, "--version", "1.0"
    )
    assert sign.returncode == 0, sign.stderr
    return repo


def test_keys_init_warns_about_a_single_root_key_on_stderr(tmp_path: Path) -> None:
    result = edgefabric("keys", "init", "--repo", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    assert "root threshold is 1" in result.stderr
    assert {line.split()[0] for line in result.stdout.splitlines()[2:]} == {
        "root",
        "targets",
        "snapshot",
        "timestamp",
    }


def test_sign_json_lists_one_target_per_profile_with_a_shared_counter(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    edgefabric("keys", "init", "--repo", str(repo), "--root-threshold", "2", "--root-keys", "3")
    out_dir = write_compile_output(tmp_path / "out", "1.0")
    args = (
        "release",
        "sign",
        str(out_dir),
        "--repo",
        str(repo),
        "--model",
        MODEL,
        "--version",
        "1.0",
        "--json",
    )
    release = json.loads(edgefabric(*args).stdout)
    assert [target["hw_profile"] for target in release["targets"]] == list(PROFILES)
    assert {target["model_counter"] for target in release["targets"]} == {1}
    assert release["targets"][0]["path"] == f"{MODEL}/1.0/cpu-x86_64.tar"


def test_verify_accepts_the_signed_artifact_directory(signed: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "out" / "intel-cpu-openvino"
    args = ("release", "verify", str(artifact), "--repo", str(signed), "--profile", "intel-cpu-openvino")
    result = edgefabric(*args, "--json")
    assert result.returncode == 0, result.stderr
    verified = json.loads(result.stdout)
    assert verified["files"] == 2
    assert verified["target"]["path"] == f"{MODEL}/1.0/intel-cpu-openvino.tar"


def test_verify_of_a_tampered_artifact_exits_1_with_one_line(signed: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "out" / "cpu-x86_64" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes().replace(b"graph", b"GRAPH"))
    args = ("release", "verify", str(model_file.parent), "--repo", str(signed), "--profile", "cpu-x86_64")
    result = edgefabric(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "tampered" in line and "model.onnx" in line


def test_verify_for_another_profile_exits_1_with_one_line(signed: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "out" / "cpu-x86_64"
    result = edgefabric("release", "verify", str(artifact), "--repo", str(signed), "--profile", "nvidia-gpu")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1


def test_signing_the_same_version_again_exits_1_with_one_line(signed: Path, tmp_path: Path) -> None:
    args = (
        "release",
        "sign",
        str(tmp_path / "out"),
        "--repo",
        str(signed),
        "--model",
        MODEL,
        "--version",
        "1.0",
    )
    result = edgefabric(*args)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "already signed" in line


def test_bundle_holds_the_metadata_chain_and_every_profiles_archive(signed: Path, tmp_path: Path) -> None:
    assert edgefabric("keys", "rotate-root", "--repo", str(signed)).returncode == 0
    assert edgefabric("keys", "resign-timestamp", "--repo", str(signed)).returncode == 0
    bundle = tmp_path / "bundle"
    args = (
        "release",
        "bundle",
        "--repo",
        str(signed),
        "--model",
        MODEL,
        "--version",
        "1.0",
        "--out",
        str(bundle),
    )
    result = edgefabric(*args, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"model": MODEL, "version": "1.0", "profiles": list(PROFILES)}
    metadata = {path.name for path in (bundle / "metadata").iterdir()}
    assert {"1.root.json", "2.root.json", "timestamp.json"} <= metadata
    assert len(list((bundle / "targets" / MODEL / "1.0").glob("*.tar"))) == len(PROFILES)
    assert edgefabric(*args).returncode == 1  # an existing bundle is never overwritten


def test_republish_gives_the_release_a_higher_counter(signed: Path) -> None:
    args = ("release", "republish", "--repo", str(signed), "--model", MODEL, "--version", "1.0", "--json")
    result = edgefabric(*args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model_counter"] == 2
