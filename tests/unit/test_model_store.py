"""The agent's model store: atomic current/previous switching, rollback and pruning."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edge_agent.errors import NothingToRollBackError
from edge_agent.store import ModelStore
from model_compiler.signing.release import SignedTarget
from protocols.manifest import (
    MANIFEST_FILENAME,
    AcceptanceSpec,
    ArtifactManifest,
    LatencyStats,
    OutputHistogram,
    ValidationMetrics,
)


def install(store: ModelStore, version: str) -> str:
    digest = f"{int(version):064x}"
    directory = store.object_dir(digest)
    directory.mkdir(parents=True)
    manifest = ArtifactManifest(
        model="digits",
        version=version,
        hw_profile="cpu-x86_64",
        runtime="onnxruntime",
        artifact_format="onnx",
        precision="int8",
        recipe="default",
        model_file="model.onnx",
        files=(),
        inputs=(),
        outputs=(),
        validation=ValidationMetrics(
            samples=1, top1_agreement=1, max_abs_error=0, cosine_similarity=1, validated_on="test"
        ),
        host_latency=LatencyStats(p50_ms=1, p95_ms=1, runs=1, measured_on="test"),
        acceptance=AcceptanceSpec(
            golden_file="golden.npz", max_abs_error=1, min_top1_agreement=1, p95_latency_ms=1
        ),
        reference_histogram=OutputHistogram(kind="top1", counts=(1,)),
        source_model_sha256="0" * 64,
    )
    (directory / MANIFEST_FILENAME).write_bytes(msgspec.json.encode(manifest))
    store.record_signed_target(
        SignedTarget(
            path=f"digits/{version}/cpu-x86_64.tar",
            sha256=digest,
            length=1,
            hw_profile="cpu-x86_64",
            model_counter=int(version),
        )
    )
    return digest


def test_activating_keeps_the_old_version_as_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.activate("digits", install(store, "1"))
    store.activate("digits", install(store, "2"))
    current, previous = store.current("digits"), store.previous("digits")
    assert current is not None and previous is not None
    assert (current.manifest.version, previous.manifest.version) == ("2", "1")
    assert current.signed.model_counter == 2
    assert (tmp_path / "models" / "digits" / "current").is_symlink()


def test_rollback_swaps_current_and_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.activate("digits", install(store, "1"))
    store.activate("digits", install(store, "2"))
    assert store.roll_back("digits").manifest.version == "1"
    previous = store.previous("digits")
    assert previous is not None and previous.manifest.version == "2"


def test_rollback_without_a_previous_version_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.activate("digits", install(store, "1"))
    with pytest.raises(NothingToRollBackError):
        store.roll_back("digits")


def test_prune_removes_only_objects_no_link_points_to(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    old = install(store, "1")
    for version in ("1", "2", "3"):
        store.activate("digits", old if version == "1" else install(store, version))
    assert store.prune() == [old]
    assert not store.has_object(old) and store.current("digits") is not None
    assert store.previous("digits") is not None
