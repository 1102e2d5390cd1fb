"""The release signer's TUF repository on disk: create it, sign releases, refresh and rotate keys.

Layout under the repository directory: `metadata/` (see `_state`), `keys/` (see `keys`),
`targets/<model>/<version>/<sha256>.<profile>.tar` (content-addressed artifact archives, as
ngclient fetches them with consistent snapshots), and `expiries.json` (each role's validity, written
last by `init_repository`: a directory without it is not a repository).

Roles: root (offline keys, configurable threshold), targets (the release signer), snapshot and
timestamp (online keys, short expiry). Invariants:
- Every publication re-signs the timestamp, and the snapshot and targets when they changed, with
  strictly increasing versions; nothing is signed unless each role's threshold of keys is at hand.
- A model's `model_counter` grows with every publication of it: a release takes the highest
  counter any target of that model has + 1, shared by all of its profiles. Re-signing a signed
  model version is refused; `republish_release` gives an old version a new, higher counter.
- A new root is signed by a threshold of the previous root's keys and of its own keys, so a client
  that trusts any earlier root walks the `N.root.json` chain up to it.
"""

from __future__ import annotations

import copy
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp

from model_compiler.errors import (
    ArtifactDirectoryError,
    InvalidKeyPolicyError,
    ReleaseExistsError,
    ReleaseNotFoundError,
    RepositoryExistsError,
    RootKeyChoiceError,
)
from model_compiler.signing._state import (
    EXPIRIES_FILENAME,
    ONLINE_ROLES,
    RepositoryMetadata,
    RepositoryState,
    reference_time,
    write_root,
)
from model_compiler.signing._state import RoleExpiries as RoleExpiries  # public: init_repository's policy
from model_compiler.signing.archive import pack_artifact
from model_compiler.signing.keys import KEYS_DIRNAME, generate_key, role_signers
from model_compiler.signing.release import (
    METADATA_DIRNAME,
    TARGETS_DIRNAME,
    ReleaseCustom,
    SignedRelease,
    release_custom,
    release_target_path,
    release_targets,
    signed_target,
)
from protocols.durable import replace_durably, write_atomic
from protocols.manifest import MANIFEST_FILENAME


class RepositoryInit(msgspec.Struct, frozen=True, kw_only=True):
    """The key ids created for each role, and what an operator should know about the setup."""

    keyids: dict[str, tuple[str, ...]]
    warnings: tuple[str, ...]


class TimestampRefresh(msgspec.Struct, frozen=True, kw_only=True):
    """The online roles after `resign_timestamp`."""

    timestamp_version: int
    timestamp_expires: datetime
    snapshot_version: int
    snapshot_expires: datetime


class RootRotation(msgspec.Struct, frozen=True, kw_only=True):
    """The new root version, the root key it replaced, and the new targets keys (if replaced)."""

    root_version: int
    retired_keyid: str
    added_keyid: str
    targets_keyids: tuple[str, ...]


def init_repository(
    repo_dir: Path,
    *,
    root_threshold: int = 1,
    root_key_count: int = 1,
    targets_threshold: int = 1,
    targets_key_count: int = 1,
    expiries: RoleExpiries | None = None,
    now: datetime | None = None,
) -> RepositoryInit:
    """Create keys and version-1 metadata for every role; `now` is the reference time for expiries."""
    policy = {"root": (root_threshold, root_key_count), "targets": (targets_threshold, targets_key_count)}
    for role, (threshold, count) in policy.items():
        if not 1 <= threshold <= count:
            raise InvalidKeyPolicyError(role, threshold, count)
    owned = (METADATA_DIRNAME, KEYS_DIRNAME, EXPIRIES_FILENAME)
    if any((repo_dir / name).exists() for name in owned):
        raise RepositoryExistsError(repo_dir)
    now, expiries = reference_time(now), expiries or RoleExpiries()
    policy.update({role: (1, 1) for role in ONLINE_ROLES})
    root = Root(expires=now + timedelta(days=expiries.root_days), consistent_snapshot=True)
    keyids: dict[str, tuple[str, ...]] = {}
    for role, (threshold, count) in policy.items():
        keys = [generate_key(repo_dir / KEYS_DIRNAME).public_key for _ in range(count)]
        for key in keys:
            root.add_key(key, role)
        root.roles[role].threshold = threshold
        keyids[role] = tuple(key.keyid for key in keys)
    root_metadata = Metadata(root)
    for signer in role_signers(repo_dir / KEYS_DIRNAME, root, "root"):
        root_metadata.sign(signer, append=True)
    write_root(repo_dir / METADATA_DIRNAME, root_metadata)
    empty = RepositoryMetadata(
        root_metadata, Metadata(Targets()), Metadata(Snapshot()), Metadata(Timestamp())
    )
    RepositoryState(repo_dir, expiries, empty).sign_and_write(now, resign_targets=True, resign_snapshot=True)
    write_atomic(repo_dir / EXPIRIES_FILENAME, msgspec.json.encode(expiries))  # marks it complete
    warnings = []
    if root_threshold == 1:
        warnings.append(
            "root threshold is 1: one stolen root key can replace every key of this repository; "
            "for production use 2 of 3 root keys kept offline (--root-threshold 2 --root-keys 3)"
        )
    return RepositoryInit(keyids=keyids, warnings=tuple(warnings))


def sign_release(
    repo_dir: Path, out_dir: Path, model: str, version: str, *, now: datetime | None = None
) -> SignedRelease:
    """Sign every `<profile>/manifest.json` artifact in a compile output as release model/version."""
    repo = RepositoryState.open(repo_dir)
    targets = repo.metadata.targets.signed
    existing = release_targets(targets, model, version)
    if existing:
        raise ReleaseExistsError(model, version, release_custom(existing[0]).model_counter)
    profile_dirs = sorted(path for path in _subdirectories(out_dir) if (path / MANIFEST_FILENAME).is_file())
    if not profile_dirs:
        raise ArtifactDirectoryError(out_dir, f"no <profile>/{MANIFEST_FILENAME} inside")
    counter = _next_counter(targets, model)
    for artifact_dir in profile_dirs:
        custom = ReleaseCustom(
            model=model, version=version, hw_profile=artifact_dir.name, model_counter=counter
        )
        target = _store_archive(repo_dir / TARGETS_DIRNAME, artifact_dir, custom)
        targets.targets[target.path] = target
    repo.publish(reference_time(now), resign_targets=True)
    return _signed_release(targets, model, version)


def republish_release(
    repo_dir: Path, model: str, version: str, *, now: datetime | None = None
) -> SignedRelease:
    """Publish an already signed version again under a new, higher counter (operator rollback)."""
    repo = RepositoryState.open(repo_dir)
    targets = repo.metadata.targets.signed
    existing = release_targets(targets, model, version)
    if not existing:
        raise ReleaseNotFoundError(model, version)
    counter = _next_counter(targets, model)
    for target in existing:
        custom = msgspec.structs.replace(release_custom(target), model_counter=counter)
        target.unrecognized_fields["custom"] = msgspec.to_builtins(custom)
    repo.publish(reference_time(now), resign_targets=True)
    return _signed_release(targets, model, version)


def resign_timestamp(repo_dir: Path, *, now: datetime | None = None) -> TimestampRefresh:
    """Re-sign the timestamp (and the snapshot when it would expire first) with the online keys."""
    now = reference_time(now)
    repo = RepositoryState.open(repo_dir)
    snapshot, expiries = repo.metadata.snapshot.signed, repo.expiries
    snapshot_expires_first = snapshot.expires <= now + timedelta(days=expiries.timestamp_days)
    repo.publish(now, resign_targets=False, resign_snapshot=snapshot_expires_first)
    timestamp = repo.metadata.timestamp.signed
    return TimestampRefresh(
        timestamp_version=timestamp.version,
        timestamp_expires=timestamp.expires,
        snapshot_version=snapshot.version,
        snapshot_expires=snapshot.expires,
    )


def rotate_root_key(
    repo_dir: Path,
    *,
    keyid: str | None = None,
    replace_targets_keys: bool = False,
    now: datetime | None = None,
) -> RootRotation:
    """Publish root N+1 with root key `keyid` replaced (and the targets keys, when asked)."""
    now = reference_time(now)
    repo = RepositoryState.open(repo_dir)
    keys_dir = repo_dir / KEYS_DIRNAME
    old_root = repo.metadata.root.signed
    root_keyids = tuple(old_root.roles["root"].keyids)
    if keyid is None and len(root_keyids) == 1:
        keyid = root_keyids[0]
    if keyid is None or keyid not in root_keyids:
        raise RootKeyChoiceError(keyid, root_keyids)
    old_signers = role_signers(keys_dir, old_root, "root")
    root = copy.deepcopy(old_root)
    root.version += 1
    root.expires = now + timedelta(days=repo.expiries.root_days)
    root.revoke_key(keyid, "root")
    added = generate_key(keys_dir).public_key
    root.add_key(added, "root")
    if replace_targets_keys:
        for old_keyid in list(root.roles["targets"].keyids):
            root.revoke_key(old_keyid, "targets")
            root.add_key(generate_key(keys_dir).public_key, "targets")
    root_metadata = Metadata(root)
    signers = {
        signer.public_key.keyid: signer for signer in old_signers + role_signers(keys_dir, root, "root")
    }
    for signer in signers.values():
        root_metadata.sign(signer, append=True)
    write_root(repo_dir / METADATA_DIRNAME, root_metadata)
    repo.metadata.root = root_metadata
    if replace_targets_keys:
        repo.publish(now, resign_targets=True)
    return RootRotation(
        root_version=root.version,
        retired_keyid=keyid,
        added_keyid=added.keyid,
        targets_keyids=tuple(root.roles["targets"].keyids) if replace_targets_keys else (),
    )


def _subdirectories(out_dir: Path) -> list[Path]:
    try:
        return [path for path in out_dir.iterdir() if path.is_dir()]
    except OSError as e:
        raise ArtifactDirectoryError(out_dir, f"not a readable directory ({e.strerror})") from e


def _next_counter(targets: Targets, model: str) -> int:
    counters = (release_custom(target) for target in targets.targets.values())
    return max((custom.model_counter for custom in counters if custom.model == model), default=0) + 1


def _signed_release(targets: Targets, model: str, version: str) -> SignedRelease:
    release = [signed_target(target) for target in release_targets(targets, model, version)]
    return SignedRelease(
        model=model,
        version=version,
        model_counter=release[0].model_counter,
        targets_version=targets.version,
        targets=tuple(release),
    )


def _store_archive(targets_dir: Path, artifact_dir: Path, custom: ReleaseCustom) -> TargetFile:
    """Pack one profile's artifact into the targets tree under its content-addressed name."""
    path = release_target_path(custom.model, custom.version, custom.hw_profile)
    staging_dir = targets_dir / custom.model / custom.version
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, staging_name = tempfile.mkstemp(prefix=".", suffix=".tar.tmp", dir=staging_dir)
    staging = Path(staging_name)
    try:
        with os.fdopen(fd, "w+b") as archive:
            manifest = pack_artifact(artifact_dir, archive)
            signed_as = {"model": custom.model, "version": custom.version, "hw_profile": custom.hw_profile}
            for field, expected in signed_as.items():
                if getattr(manifest, field) != expected:
                    reason = f"manifest {field} is {getattr(manifest, field)!r}, signing as {expected!r}"
                    raise ArtifactDirectoryError(artifact_dir, reason)
            archive.seek(0)
            target = TargetFile.from_data(path, archive)
        target.unrecognized_fields["custom"] = msgspec.to_builtins(custom)
        replace_durably(staging, targets_dir / target.get_prefixed_paths()[0])
    finally:
        staging.unlink(missing_ok=True)
    return target
