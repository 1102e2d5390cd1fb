"""Offline bundles: one release plus the signed metadata a device needs to verify it with no network.

Layout: `metadata/` (every `N.root.json`, `timestamp.json`, the current `N.snapshot.json` and
`N.targets.json`), `targets/` (the release's content-addressed archives, as in the repository) and
`bundle.json` (`BundleIndex`). A device verifies a bundle with
`ReleaseVerifier.for_local_directory` and its *own* trusted root: the bundle grants no trust, its
root files are only links of the signed chain.

Invariants:
- Files are copied byte for byte (metadata hashes pin exact bytes), never re-serialized.
- The bundle appears complete or not at all: it is built in a staging directory next to `out_dir`
  and renamed into place; an existing `out_dir` is never overwritten.
- The bundled timestamp expires as the repository's does; for a long offline window, create the
  repository with longer timestamp and snapshot expiries.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import msgspec

from model_compiler.errors import DestinationExistsError, ReleaseNotFoundError
from model_compiler.signing._state import TARGETS_META_KEY, TIMESTAMP_FILENAME, RepositoryState, root_versions
from model_compiler.signing.release import (
    BUNDLE_INDEX_FILENAME,
    METADATA_DIRNAME,
    TARGETS_DIRNAME,
    BundleIndex,
    release_custom,
    release_targets,
)
from protocols.durable import fsync_directory, write_atomic


def make_bundle(repo_dir: Path, model: str, version: str, out_dir: Path) -> BundleIndex:
    """Write an offline bundle of release model/version at `out_dir`."""
    if os.path.lexists(out_dir):
        raise DestinationExistsError(out_dir)
    state = RepositoryState.open(repo_dir)
    targets = release_targets(state.metadata.targets.signed, model, version)
    if not targets:
        raise ReleaseNotFoundError(model, version)
    metadata_dir = repo_dir / METADATA_DIRNAME
    snapshot_version = state.metadata.timestamp.signed.snapshot_meta.version
    targets_version = state.metadata.snapshot.signed.meta[TARGETS_META_KEY].version
    metadata_files = [
        *(f"{version}.root.json" for version in root_versions(metadata_dir)),
        TIMESTAMP_FILENAME,
        f"{snapshot_version}.snapshot.json",
        f"{targets_version}.targets.json",
    ]
    index = BundleIndex(
        model=model, version=version, profiles=tuple(release_custom(t).hw_profile for t in targets)
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging", dir=out_dir.parent))
    try:
        for name in metadata_files:
            _copy_durably(metadata_dir / name, staging / METADATA_DIRNAME / name)
        for target in targets:
            archive = target.get_prefixed_paths()[0]
            _copy_durably(repo_dir / TARGETS_DIRNAME / archive, staging / TARGETS_DIRNAME / archive)
        write_atomic(staging / BUNDLE_INDEX_FILENAME, msgspec.json.encode(index))
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(out_dir.parent)
    return index


def _copy_durably(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    with destination.open("rb") as f:
        os.fsync(f.fileno())
    fsync_directory(destination.parent)
