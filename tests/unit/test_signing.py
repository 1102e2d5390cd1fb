"""Release signing and device-side verification, with real keys and real files.

Every attack from docs (security anchors §3 A-C) is played against a device that verifies with
`ReleaseVerifier`; each must be refused with its typed error and leave nothing at the destination.
Malicious metadata is crafted here with python-tuf's Metadata API, the way tuf-conformance's
repository simulator does, independently of the signer under test.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from model_compiler.errors import (
    ArtifactDirectoryError,
    CounterRollbackError,
    DestinationExistsError,
    ExpiredMetadataError,
    InvalidKeyPolicyError,
    LengthMismatchError,
    ProfileMismatchError,
    ReleaseExistsError,
    ReleaseMismatchError,
    RepositoryExistsError,
    RollbackError,
    RootKeyChoiceError,
    TamperedArtifactError,
    TargetNotFoundError,
    UnsafeArchiveError,
    UntrustedSignatureError,
    VerificationError,
)
from model_compiler.signing.archive import pack_artifact
from model_compiler.signing.bundle import make_bundle
from model_compiler.signing.keys import role_signers
from model_compiler.signing.release import bundle_index_decoder
from model_compiler.signing.repository import (
    init_repository,
    republish_release,
    resign_timestamp,
    rotate_root_key,
    sign_release,
)
from model_compiler.verification import ReleaseVerifier, VerifiedArtifact
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

ROOT = Path(__file__).resolve().parents[2]
MODEL = "digits-mlp"
PROFILES = ("cpu-x86_64", "nvidia-gpu")


# --- compile output, repository and device ------------------------------------------------------


def write_artifact(directory: Path, *, model: str, version: str, profile: str) -> Path:
    """A compile output directory: a fake model, golden samples and a valid manifest."""
    directory.mkdir(parents=True)
    contents = {
        "model.onnx": f"onnx graph of {model} {version} for {profile}".encode(),
        "golden.npz": b"PK\x03\x04",
    }
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    files = tuple(
        ArtifactFile(path=name, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        for name, data in contents.items()
    )
    manifest = ArtifactManifest(
        model=model,
        version=version,
        hw_profile=profile,
        runtime="onnxruntime",
        artifact_format="onnx",
        precision="fp32",
        recipe="ort-basic-optimizations",
        model_file="model.onnx",
        files=files,
        inputs=(TensorSpec(name="pixels", dtype="float32", shape=(None, 64)),),
        outputs=(TensorSpec(name="logits", dtype="float32", shape=(None, 10)),),
        validation=ValidationMetrics(
            samples=540, top1_agreement=1.0, max_abs_error=1e-6, cosine_similarity=1.0, validated_on="cpu"
        ),
        host_latency=LatencyStats(p50_ms=0.2, p95_ms=0.4, runs=200, measured_on="x86_64"),
        acceptance=AcceptanceSpec(
            golden_file="golden.npz", max_abs_error=1e-4, min_top1_agreement=0.99, p95_latency_ms=5.0
        ),
        reference_histogram=OutputHistogram(kind="top1", counts=(54,) * 10),
        source_model_sha256="ab" * 32,
    )
    (directory / "manifest.json").write_bytes(encode(manifest))
    return directory


def compile_output(root: Path, version: str, *, model: str = MODEL) -> Path:
    out_dir = root / f"out-{model}-{version}"
    for profile in PROFILES:
        write_artifact(out_dir / profile, model=model, version=version, profile=profile)
    return out_dir


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    init_repository(tmp_path / "repo")
    return tmp_path / "repo"


@dataclass
class Device:
    """An enrolled device: the root it was given, its persisted TUF state, where it fetches from."""

    trusted_root: bytes
    state_dir: Path
    source_dir: Path

    def install(
        self, version: str = "1.0", *, profile: str = "cpu-x86_64", min_counter: int = 0, slot: str = "next"
    ) -> VerifiedArtifact:
        verifier = ReleaseVerifier.for_local_directory(
            self.trusted_root, self.state_dir / "tuf", self.source_dir
        )
        return verifier.verify_and_download(
            MODEL, version, profile, min_counter=min_counter, dest_dir=self.state_dir / "models" / slot
        )

    def refuses(
        self,
        error: type[VerificationError],
        version: str = "1.0",
        *,
        profile: str = "cpu-x86_64",
        min_counter: int = 0,
    ) -> None:
        """The install fails with `error`, and neither the slot nor a staging leftover exists."""
        with pytest.raises(error):
            self.install(version, profile=profile, min_counter=min_counter)
        models = self.state_dir / "models"
        written = [path.name for path in models.iterdir()] if models.exists() else []
        assert not [name for name in written if name == "next" or name.startswith(".")], written


def enroll(repo_dir: Path, state_dir: Path, *, source_dir: Path | None = None) -> Device:
    trusted_root = (repo_dir / "metadata" / "1.root.json").read_bytes()
    return Device(trusted_root, state_dir, source_dir or repo_dir)


# --- an attacker's (or a careless signer's) metadata, crafted with python-tuf directly -----------


def current(repo_dir: Path) -> tuple[Root, Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
    metadata = repo_dir / "metadata"
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json"))
    snapshot = Metadata[Snapshot].from_file(
        str(metadata / f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    )
    targets_version = snapshot.signed.meta["targets.json"].version
    targets = Metadata[Targets].from_file(str(metadata / f"{targets_version}.targets.json"))
    return Metadata[Root].from_file(str(metadata / "root.json")).signed, targets, snapshot, timestamp


def write_signed(
    metadata: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
    signers: list[Signer],
    path: Path,
) -> None:
    metadata.signatures.clear()
    for signer in signers:
        metadata.sign(signer, append=True)
    metadata.to_file(str(path))


def publish_timestamp(
    repo_dir: Path, *, snapshot_version: int | None = None, signer: Signer | None = None
) -> None:
    """A new timestamp version naming `snapshot_version` (default: the current one)."""
    root, _, snapshot, timestamp = current(repo_dir)
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot_version or snapshot.signed.version)
    signers = [signer] if signer else role_signers(repo_dir / "keys", root, "timestamp")
    write_signed(timestamp, signers, repo_dir / "metadata" / "timestamp.json")


def publish_targets(
    repo_dir: Path, edit: Callable[[Targets], None], *, targets_signers: list[Signer] | None = None
) -> None:
    """Edit and re-sign targets (by default with every targets key), then snapshot and timestamp."""
    root, targets, snapshot, _ = current(repo_dir)
    keys, metadata = repo_dir / "keys", repo_dir / "metadata"
    edit(targets.signed)
    targets.signed.version += 1
    signers = role_signers(keys, root, "targets") if targets_signers is None else targets_signers
    write_signed(targets, signers, metadata / f"{targets.signed.version}.targets.json")
    snapshot.signed.version += 1
    snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
    write_signed(
        snapshot, role_signers(keys, root, "snapshot"), metadata / f"{snapshot.signed.version}.snapshot.json"
    )
    publish_timestamp(repo_dir, snapshot_version=snapshot.signed.version)


def publish_archive(
    repo_dir: Path, data: bytes, *, profile: str = "cpu-x86_64", version: str = "1.0"
) -> None:
    """Sign arbitrary archive bytes as a release target with valid custom fields."""
    target = TargetFile.from_data(f"{MODEL}/{version}/{profile}.tar", data)
    custom = {"model": MODEL, "version": version, "hw_profile": profile, "model_counter": 1}
    target.unrecognized_fields["custom"] = custom
    stored = repo_dir / "targets" / target.get_prefixed_paths()[0]
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(data)
    publish_targets(repo_dir, lambda targets: targets.targets.__setitem__(target.path, target))


def stored_archive(repo_dir: Path, profile: str = "cpu-x86_64") -> Path:
    (path,) = (repo_dir / "targets" / MODEL / "1.0").glob(f"*.{profile}.tar")
    return path


# --- the signer ----------------------------------------------------------------------------------


def test_private_keys_are_readable_only_by_their_owner(repo: Path) -> None:
    rotate_root_key(repo, replace_targets_keys=True)
    keys = list((repo / "keys").iterdir())
    assert len(keys) == 6  # root, targets, snapshot, timestamp + the rotated root and targets keys
    assert {key.stat().st_mode & 0o777 for key in keys} == {0o600}
    assert (repo / "keys").stat().st_mode & 0o777 == 0o700


def test_init_refuses_an_existing_repository_and_keeps_its_keys(repo: Path) -> None:
    keys_before = sorted(path.name for path in (repo / "keys").iterdir())
    with pytest.raises(RepositoryExistsError):
        init_repository(repo)
    assert sorted(path.name for path in (repo / "keys").iterdir()) == keys_before


def test_single_root_key_init_warns_and_threshold_two_of_three_does_not(tmp_path: Path) -> None:
    (warning,) = init_repository(tmp_path / "dev").warnings
    assert "root threshold is 1" in warning
    production = init_repository(tmp_path / "prod", root_threshold=2, root_key_count=3)
    assert production.warnings == ()
    assert len(production.keyids["root"]) == 3


def test_init_refuses_a_threshold_above_the_key_count(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyPolicyError):
        init_repository(tmp_path / "repo", root_threshold=2, root_key_count=1)
    assert not (tmp_path / "repo").exists()


def test_device_installs_every_file_of_a_signed_release(repo: Path, tmp_path: Path) -> None:
    release = sign_release(repo, compile_output(tmp_path, "1.0"), MODEL, "1.0")
    assert [target.hw_profile for target in release.targets] == list(PROFILES)
    installed = enroll(repo, tmp_path / "device").install(profile="nvidia-gpu")
    assert installed.target == release.targets[1]
    assert installed.target.path == f"{MODEL}/1.0/nvidia-gpu.tar"
    assert installed.manifest.hw_profile == "nvidia-gpu"
    assert sorted(path.name for path in installed.directory.iterdir()) == [
        "golden.npz",
        "manifest.json",
        "model.onnx",
    ]
    assert (
        installed.directory / "model.onnx"
    ).read_bytes() == f"onnx graph of {MODEL} 1.0 for nvidia-gpu".encode()


def test_signing_a_signed_version_again_is_refused(repo: Path, tmp_path: Path) -> None:
    sign_release(repo, compile_output(tmp_path, "1.0"), MODEL, "1.0")
    with pytest.raises(ReleaseExistsError):
        sign_release(repo, tmp_path / f"out-{MODEL}-1.0", MODEL, "1.0")


def test_each_release_takes_the_next_counter_of_its_model_for_all_profiles(
    repo: Path, tmp_path: Path
) -> None:
    first = sign_release(repo, compile_output(tmp_path, "1.0"), MODEL, "1.0")
    second = sign_release(repo, compile_output(tmp_path, "1.1"), MODEL, "1.1")
    other = sign_release(repo, compile_output(tmp_path, "1.0", model="resnet"), "resnet", "1.0")
    assert {t.model_counter for t in first.targets} == {1}
    assert {t.model_counter for t in second.targets} == {2}
    assert {t.model_counter for t in other.targets} == {1}
    assert second.targets_version > first.targets_version


def test_republished_old_version_gets_a_higher_counter_that_devices_accept(
    repo: Path, tmp_path: Path
) -> None:
    sign_release(repo, compile_output(tmp_path, "1.0"), MODEL, "1.0")
    sign_release(repo, compile_output(tmp_path, "2.0"), MODEL, "2.0")
    device = enroll(repo, tmp_path / "device")
    assert device.install("2.0", min_counter=1, slot="v2").target.model_counter == 2
    device.refuses(CounterRollbackError, "1.0", min_counter=2)
    rollback = republish_release(repo, MODEL, "1.0")
    assert rollback.model_counter == 3
    assert device.install("1.0", min_counter=2, slot="v1").target.model_counter == 3


def test_archives_are_byte_identical_when_signed_in_two_repositories(tmp_path: Path) -> None:
    out_dir = compile_output(tmp_path, "1.0")
    digests = []
    for name in ("a", "b"):
        init_repository(tmp_path / name)
        digests.append([t.sha256 for t in sign_release(tmp_path / name, out_dir, MODEL, "1.0").targets])
    assert digests[0] == digests[1]
    with tarfile.open(stored_archive(tmp_path / "a")) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["golden.npz", "manifest.json", "model.onnx"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in members} == {
        (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)
    }
    assert all(m.pax_headers == {} for m in members)


def test_signing_refuses_an_artifact_whose_manifest_names_another_profile(repo: Path, tmp_path: Path) -> None:
    write_artifact(tmp_path / "out" / "cpu-x86_64", model=MODEL, version="1.0", profile="nvidia-gpu")
    with pytest.raises(ArtifactDirectoryError, match="hw_profile"):
        sign_release(repo, tmp_path / "out", MODEL, "1.0")


def test_signing_refuses_files_that_differ_from_the_manifest(repo: Path, tmp_path: Path) -> None:
    out_dir = compile_output(tmp_path, "1.0")
    (out_dir / "nvidia-gpu" / "model.onnx").write_bytes(b"swapped after compiling")
    with pytest.raises(ArtifactDirectoryError, match=r"model\.onnx"):
        sign_release(repo, out_dir, MODEL, "1.0")


# --- attacks on the device: refused with a typed error, nothing installed ------------------------


@pytest.fixture
def released(repo: Path, tmp_path: Path) -> Path:
    sign_release(repo, compile_output(tmp_path, "1.0"), MODEL, "1.0")
    return repo


def test_artifact_with_a_flipped_byte_is_refused(released: Path, tmp_path: Path) -> None:
    archive = stored_archive(released)
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0x01
    archive.write_bytes(bytes(data))
    enroll(released, tmp_path / "device").refuses(TamperedArtifactError)


def test_artifact_longer_than_signed_is_refused(released: Path, tmp_path: Path) -> None:
    with stored_archive(released).open("ab") as archive:
        archive.write(b"\0" * 4096)
    enroll(released, tmp_path / "device").refuses(LengthMismatchError)


def test_replayed_older_timestamp_is_refused_after_the_device_saw_a_newer_one(
    released: Path, tmp_path: Path
) -> None:
    old_timestamp = (released / "metadata" / "timestamp.json").read_bytes()
    resign_timestamp(released)
    device = enroll(released, tmp_path / "device")
    device.install(slot="seen-newer")
    (released / "metadata" / "timestamp.json").write_bytes(old_timestamp)
    device.refuses(RollbackError)


def test_replayed_older_snapshot_is_refused_even_under_a_fresh_timestamp(
    released: Path, tmp_path: Path
) -> None:
    old_snapshot_version = current(released)[2].signed.version
    sign_release(released, compile_output(tmp_path, "1.1"), MODEL, "1.1")
    device = enroll(released, tmp_path / "device")
    device.install("1.1", slot="seen-newer")
    publish_timestamp(released, snapshot_version=old_snapshot_version)  # online timestamp key stolen
    device.refuses(RollbackError)


def test_expired_timestamp_is_refused_as_a_possible_freeze(released: Path, tmp_path: Path) -> None:
    resign_timestamp(released, now=datetime.now(UTC) - timedelta(days=3))
    enroll(released, tmp_path / "device").refuses(ExpiredMetadataError)


def test_timestamp_signed_by_an_unknown_key_is_refused(released: Path, tmp_path: Path) -> None:
    publish_timestamp(released, signer=CryptoSigner.generate_ed25519())
    enroll(released, tmp_path / "device").refuses(UntrustedSignatureError)


@pytest.fixture
def threshold_two(tmp_path: Path) -> Path:
    repo_dir = tmp_path / "repo2"
    init_repository(repo_dir, root_threshold=2, root_key_count=3, targets_threshold=2, targets_key_count=2)
    sign_release(repo_dir, compile_output(tmp_path, "1.0"), MODEL, "1.0")
    return repo_dir


def test_targets_signed_below_threshold_are_refused(threshold_two: Path, tmp_path: Path) -> None:
    root = current(threshold_two)[0]
    one_key = role_signers(threshold_two / "keys", root, "targets")[:1]
    publish_targets(threshold_two, lambda targets: None, targets_signers=one_key)
    enroll(threshold_two, tmp_path / "device").refuses(UntrustedSignatureError)


def test_new_root_signed_below_the_old_threshold_is_refused(threshold_two: Path, tmp_path: Path) -> None:
    root = current(threshold_two)[0]
    one_root_key = role_signers(threshold_two / "keys", root, "root")[:1]
    root.version += 1
    root.add_key(CryptoSigner.generate_ed25519().public_key, "targets")
    write_signed(Metadata(root), one_root_key, threshold_two / "metadata" / "2.root.json")
    enroll(threshold_two, tmp_path / "device").refuses(UntrustedSignatureError)


def test_artifact_signed_for_another_hardware_profile_is_refused(released: Path, tmp_path: Path) -> None:
    def relabel(targets: Targets) -> None:
        targets.targets[f"{MODEL}/1.0/cpu-x86_64.tar"].unrecognized_fields["custom"]["hw_profile"] = (
            "nvidia-gpu"
        )

    publish_targets(released, relabel)
    enroll(released, tmp_path / "device").refuses(ProfileMismatchError)


@pytest.mark.parametrize("installed_counter", [1, 5])
def test_release_not_newer_than_the_installed_counter_is_refused(
    released: Path, tmp_path: Path, installed_counter: int
) -> None:
    enroll(released, tmp_path / "device").refuses(CounterRollbackError, min_counter=installed_counter)


def test_unsigned_target_is_not_found(released: Path, tmp_path: Path) -> None:
    enroll(released, tmp_path / "device").refuses(TargetNotFoundError, profile="intel-npu")


def test_signed_archive_whose_manifest_names_another_version_is_refused(
    released: Path, tmp_path: Path
) -> None:
    artifact = write_artifact(tmp_path / "v9", model=MODEL, version="9.9", profile="cpu-x86_64")
    archive = io.BytesIO()
    pack_artifact(artifact, archive)
    publish_archive(released, archive.getvalue())
    enroll(released, tmp_path / "device").refuses(ReleaseMismatchError)


def _regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(kind: bytes, target: str) -> Callable[[str], tarfile.TarInfo]:
    def member(name: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    return member


UNSAFE_MEMBERS = {
    "dot-dot": ("../escaped.onnx", _regular),
    "absolute": ("/tmp/escaped.onnx", _regular),
    "symlink": ("model.onnx", _link(tarfile.SYMTYPE, "/etc/passwd")),
    "hardlink": ("model.onnx", _link(tarfile.LNKTYPE, "/etc/passwd")),
    "device": ("model.onnx", _link(tarfile.CHRTYPE, "")),
    "fifo": ("model.onnx", _link(tarfile.FIFOTYPE, "")),
}


@pytest.mark.parametrize("case", UNSAFE_MEMBERS)
def test_signed_archive_with_an_unsafe_member_is_refused(released: Path, tmp_path: Path, case: str) -> None:
    name, make_member = UNSAFE_MEMBERS[case]
    artifact = write_artifact(tmp_path / "evil", model=MODEL, version="1.0", profile="cpu-x86_64")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(artifact / "manifest.json", arcname="manifest.json")
        tar.add(artifact / "golden.npz", arcname="golden.npz")
        payload = b"malicious"
        member = make_member(name)
        member.size = len(payload) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isreg() else None)
    publish_archive(released, archive.getvalue())
    device = enroll(released, tmp_path / "device")
    device.refuses(UnsafeArchiveError)
    assert not (device.state_dir / "models" / "escaped.onnx").exists()
    assert not Path("/tmp/escaped.onnx").exists()


def test_existing_destination_is_never_overwritten(released: Path, tmp_path: Path) -> None:
    device = enroll(released, tmp_path / "device")
    (device.state_dir / "models" / "next").mkdir(parents=True)
    with pytest.raises(DestinationExistsError):
        device.install()


# --- key rotation ---------------------------------------------------------------------------------


def test_device_trusting_the_old_root_accepts_a_rotated_root_and_targets_key(
    released: Path, tmp_path: Path
) -> None:
    device = enroll(released, tmp_path / "device")
    device.install(slot="v1")
    rotation = rotate_root_key(released, replace_targets_keys=True)
    assert rotation.root_version == 2
    sign_release(released, compile_output(tmp_path, "2.0"), MODEL, "2.0")
    assert device.install("2.0", min_counter=1, slot="v2").target.model_counter == 2
    fresh = enroll(released, tmp_path / "fresh-device")  # enrolled with root v1 only: walks the chain
    assert fresh.install("2.0").target.model_counter == 2


def test_targets_signed_with_the_pre_rotation_key_are_refused(released: Path, tmp_path: Path) -> None:
    old_root = current(released)[0]
    old_targets_keys = role_signers(released / "keys", old_root, "targets")
    rotate_root_key(released, replace_targets_keys=True)
    publish_targets(released, lambda targets: None, targets_signers=old_targets_keys)
    enroll(released, tmp_path / "device").refuses(UntrustedSignatureError)


def test_two_of_three_root_rotation_is_accepted_by_a_device_on_the_old_root(
    threshold_two: Path, tmp_path: Path
) -> None:
    first_key = current(threshold_two)[0].roles["root"].keyids[0]
    with pytest.raises(RootKeyChoiceError):
        rotate_root_key(threshold_two)
    rotation = rotate_root_key(threshold_two, keyid=first_key)
    new_root = current(threshold_two)[0]
    assert (
        first_key not in new_root.roles["root"].keyids
        and rotation.added_keyid in new_root.roles["root"].keyids
    )
    republish_release(threshold_two, MODEL, "1.0")
    assert enroll(threshold_two, tmp_path / "device").install(min_counter=1).target.model_counter == 2


def test_resigned_timestamp_is_accepted_with_a_higher_version(released: Path, tmp_path: Path) -> None:
    before = current(released)[3].signed.version
    refresh = resign_timestamp(released)
    assert refresh.timestamp_version == before + 1
    assert refresh.timestamp_expires > datetime.now(UTC)
    enroll(released, tmp_path / "device").install()


# --- offline bundles and the device's import boundary ---------------------------------------------


def test_bundle_verifies_offline_with_the_devices_own_root(released: Path, tmp_path: Path) -> None:
    rotate_root_key(released)
    index = make_bundle(released, MODEL, "1.0", tmp_path / "bundle")
    assert bundle_index_decoder.decode((tmp_path / "bundle" / "bundle.json").read_bytes()) == index
    assert index.profiles == PROFILES
    device = enroll(released, tmp_path / "device", source_dir=tmp_path / "bundle")
    assert device.install(profile="nvidia-gpu").manifest.hw_profile == "nvidia-gpu"
    with pytest.raises(DestinationExistsError):
        make_bundle(released, MODEL, "1.0", tmp_path / "bundle")


def test_bundle_signed_by_another_repository_is_refused(released: Path, tmp_path: Path) -> None:
    attacker = tmp_path / "attacker"
    init_repository(attacker)
    sign_release(attacker, compile_output(tmp_path / "evil", "1.0"), MODEL, "1.0")
    make_bundle(attacker, MODEL, "1.0", tmp_path / "bundle")
    enroll(released, tmp_path / "device", source_dir=tmp_path / "bundle").refuses(UntrustedSignatureError)


def test_verifier_imports_no_toolchain_and_verifies_without_cryptography(
    released: Path, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path

        class BlockCryptography:  # the slim agent install has no `cryptography`
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "cryptography":
                    raise ImportError(name)

        sys.meta_path.insert(0, BlockCryptography())
        from model_compiler.verification import ReleaseVerifier

        root, state, source = (Path(arg) for arg in sys.argv[1:4])
        verifier = ReleaseVerifier.for_local_directory(root.read_bytes(), state / "tuf", source)
        model = sys.argv[4]
        verifier.verify_and_download(model, "1.0", "cpu-x86_64", min_counter=0, dest_dir=state / "model")
        heavy = {"onnx", "onnxruntime", "openvino", "tensorflow", "numpy", "cryptography"}
        print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
        print(sorted(name for name in sys.modules if name.startswith("model_compiler.signing.")))
        """
    )
    root_file = released / "metadata" / "1.root.json"
    argv = [sys.executable, "-c", script, str(root_file), str(tmp_path / "device"), str(released), MODEL]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    heavy, signing_modules = result.stdout.splitlines()
    assert heavy == "[]"
    assert signing_modules == "['model_compiler.signing.archive', 'model_compiler.signing.release']"
    assert (tmp_path / "device" / "model" / "model.onnx").is_file()
