"""What a signed release is: one TUF target per hardware profile, with its custom fields.

This is the contract between the release signer (`repository`) and the device's verifier
(`model_compiler.verification`); it imports only msgspec, tuf and `protocols`.

Invariants:
- A profile's artifact is the target `<model>/<version>/<profile>.tar`. Each part passes the wire
  id rules (no `/`, no leading `.`), so a target path never leaves the repository's targets tree.
- Every release target carries `custom = {model, version, hw_profile, model_counter}`. All profiles
  of one release share one counter, and a model's counter grows with every publication
  (republishing an old version included), so a device can refuse anything not newer than what it
  runs.
"""

from __future__ import annotations

import msgspec
from tuf.api.metadata import TargetFile, Targets

from model_compiler.errors import InvalidMetadataError
from protocols.codec import Decoder
from protocols.errors import InvalidIdentifierError
from protocols.identifiers import ModelName, NonNegative, Positive, ProfileName, Sha256Hex, Version

METADATA_DIRNAME = "metadata"  # what a repository and an offline bundle serve: metadata/ and targets/
TARGETS_DIRNAME = "targets"
BUNDLE_INDEX_FILENAME = "bundle.json"


class ReleaseCustom(msgspec.Struct, frozen=True, kw_only=True):
    """The `custom` object of a release target; unknown fields are accepted (newer signers)."""

    model: ModelName
    version: Version
    hw_profile: ProfileName
    model_counter: Positive


class SignedTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One profile's artifact as the targets role signed it."""

    path: str
    sha256: Sha256Hex
    length: NonNegative
    hw_profile: ProfileName
    model_counter: Positive


class SignedRelease(msgspec.Struct, frozen=True, kw_only=True):
    """Every profile of one model version, published in targets metadata `targets_version`."""

    model: ModelName
    version: Version
    model_counter: Positive
    targets_version: Positive
    targets: tuple[SignedTarget, ...]


class BundleIndex(msgspec.Struct, frozen=True, kw_only=True):
    """`bundle.json` of an offline bundle: which release its `targets/` carry."""

    model: ModelName
    version: Version
    profiles: tuple[ProfileName, ...]


bundle_index_decoder: Decoder[BundleIndex] = Decoder("bundle index", BundleIndex)


class _TargetName(msgspec.Struct, frozen=True, kw_only=True):
    model: ModelName
    version: Version
    hw_profile: ProfileName


def release_target_path(model: str, version: str, profile: str) -> str:
    """The target path of one profile's artifact; raises `InvalidIdentifierError` for unsafe ids."""
    try:
        msgspec.convert({"model": model, "version": version, "hw_profile": profile}, _TargetName)
    except msgspec.ValidationError as e:
        raise InvalidIdentifierError("release target", f"{model}/{version}/{profile}", str(e)) from e
    return f"{model}/{version}/{profile}.tar"


def release_custom(target: TargetFile) -> ReleaseCustom:
    """The release fields of a signed target; raises `InvalidMetadataError` when they are malformed."""
    try:
        return msgspec.convert(target.custom, ReleaseCustom)
    except msgspec.ValidationError as e:
        raise InvalidMetadataError(f"target {target.path}: custom fields: {e}") from e


def signed_target(target: TargetFile) -> SignedTarget:
    """A release target as a plain value (for reports and `--json`)."""
    custom = release_custom(target)
    sha256 = target.hashes.get("sha256")
    if sha256 is None:
        raise InvalidMetadataError(f"target {target.path} has no sha256 hash")
    return SignedTarget(
        path=target.path,
        sha256=sha256,
        length=target.length,
        hw_profile=custom.hw_profile,
        model_counter=custom.model_counter,
    )


def release_targets(targets: Targets, model: str, version: str) -> list[TargetFile]:
    """The targets of every profile of one release, in path order."""
    entries = sorted(targets.targets.values(), key=lambda target: target.path)
    return [t for t in entries if (custom := release_custom(t)).model == model and custom.version == version]
