"""The artifact archive: one profile's compile output as a deterministic tar, and its safe extraction.

Invariants:
- `pack_artifact` output depends only on file names and bytes: members sorted by name, regular
  files only, no directory entries, mtime 0, uid/gid 0, empty owner names, mode 0644, GNU format
  (no pax headers). Packing the same directory twice gives byte-identical archives.
- An archive holds exactly `manifest.json` plus the files that manifest lists, each matching its
  listed sha256 and size: checked when packing and again after extracting.
- `extract_artifact` checks every member's type and name before it writes anything, and refuses
  (`UnsafeArchiveError`) absolute names, empty, `.` or `..` parts, backslashes, links, devices,
  FIFOs, directories, sparse files, duplicates and files that are also a path's directory. The tar
  is uncompressed, so what extraction writes is bounded by the archive's (signed) length.

Imports only the standard library and `protocols`, so the device-side verifier can use it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from model_compiler.errors import ArtifactDirectoryError, TamperedArtifactError, UnsafeArchiveError
from protocols.durable import fsync_directory
from protocols.errors import ProtocolError
from protocols.manifest import MANIFEST_FILENAME, ArtifactManifest, manifest_decoder

_PLAIN_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "directory",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


def manifest_mismatch(manifest: ArtifactManifest, directory: Path) -> str | None:
    """The first way the files in `directory` differ from `manifest`, or None when all match."""
    for entry in manifest.files:
        path = directory / entry.path
        try:
            status = path.lstat()
        except FileNotFoundError:
            return f"{entry.path} is missing"
        if not stat.S_ISREG(status.st_mode):
            return f"{entry.path} is not a regular file"
        if status.st_size != entry.size_bytes:
            return f"{entry.path} has {status.st_size} bytes, the manifest lists {entry.size_bytes}"
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != entry.sha256:
            return f"{entry.path} has sha256 {digest}, the manifest lists {entry.sha256}"
    return None


def pack_artifact(artifact_dir: Path, sink: BinaryIO) -> ArtifactManifest:
    """Write `artifact_dir` (manifest + listed files) to `sink` as a deterministic tar."""
    try:
        manifest_bytes = (artifact_dir / MANIFEST_FILENAME).read_bytes()
        manifest = manifest_decoder.decode(manifest_bytes)
    except FileNotFoundError as e:
        raise ArtifactDirectoryError(artifact_dir, f"no {MANIFEST_FILENAME}") from e
    except ProtocolError as e:
        raise ArtifactDirectoryError(artifact_dir, str(e)) from e
    names = [entry.path for entry in manifest.files]
    if len(set(names)) != len(names) or MANIFEST_FILENAME in names:
        raise ArtifactDirectoryError(artifact_dir, f"{MANIFEST_FILENAME} lists a file twice or itself")
    mismatch = manifest_mismatch(manifest, artifact_dir)
    if mismatch is not None:
        raise ArtifactDirectoryError(artifact_dir, mismatch)
    sizes = {entry.path: entry.size_bytes for entry in manifest.files}
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted([MANIFEST_FILENAME, *names]):
            if name == MANIFEST_FILENAME:
                tar.addfile(_plain_member(name, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            else:
                with (artifact_dir / name).open("rb") as f:
                    tar.addfile(_plain_member(name, sizes[name]), f)
    return manifest


def _plain_member(name: str, size: int) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = size
    member.mode = 0o644
    member.mtime = 0
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.type = tarfile.REGTYPE
    return member


def extract_artifact(archive: Path, destination: Path, *, target: str) -> ArtifactManifest:
    """Extract a verified archive into `destination` (created here) and check it against its manifest.

    `target` names the archive in errors. On an error, `destination` may hold part of the files:
    callers extract into a staging directory and rename it into place only on success.
    """
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = tar.getmembers()
            _check_members(members, target)
            manifest = _read_manifest(tar, members, target)
            listed = {entry.path for entry in manifest.files} | {MANIFEST_FILENAME}
            unlisted = sorted(member.name for member in members if member.name not in listed)
            if unlisted:
                raise UnsafeArchiveError(target, unlisted[0], "not listed in the manifest")
            _write_members(tar, members, destination)
    except tarfile.TarError as e:
        raise UnsafeArchiveError(target, archive.name, f"not a readable tar: {e}") from e
    mismatch = manifest_mismatch(manifest, destination)
    if mismatch is not None:
        raise TamperedArtifactError(target, mismatch)
    return manifest


def _check_members(members: list[tarfile.TarInfo], target: str) -> None:
    names: set[str] = set()
    for member in members:
        if member.type not in _PLAIN_FILE_TYPES:
            kind = _TYPE_NAMES.get(member.type, f"member type {member.type!r}")
            raise UnsafeArchiveError(target, member.name, f"is a {kind}, only regular files are allowed")
        reason = _unsafe_name_reason(member.name)
        if reason is not None:
            raise UnsafeArchiveError(target, member.name, reason)
        if member.name in names:
            raise UnsafeArchiveError(target, member.name, "appears twice")
        names.add(member.name)
    for name in names:
        parts = name.split("/")
        if any("/".join(parts[:i]) in names for i in range(1, len(parts))):
            raise UnsafeArchiveError(target, name, "a directory on its path is also a file")


def _unsafe_name_reason(name: str) -> str | None:
    if name.startswith("/"):
        return "absolute path"
    if "\\" in name:
        return "backslash in path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "empty, '.' or '..' path part"
    return None


def _read_manifest(tar: tarfile.TarFile, members: list[tarfile.TarInfo], target: str) -> ArtifactManifest:
    member = next((m for m in members if m.name == MANIFEST_FILENAME), None)
    source = tar.extractfile(member) if member is not None else None
    if source is None:
        raise TamperedArtifactError(target, f"no {MANIFEST_FILENAME} in the archive")
    try:
        return manifest_decoder.decode(source.read())
    except ProtocolError as e:
        raise TamperedArtifactError(target, str(e)) from e


def _write_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], destination: Path) -> None:
    destination.mkdir()
    directories = {destination}
    for member in members:
        path = destination.joinpath(*member.name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        directories.add(path.parent)
        source = tar.extractfile(member)
        assert source is not None, "_check_members lets only regular files through"
        with source, path.open("xb") as sink:
            shutil.copyfileobj(source, sink)
            sink.flush()
            os.fsync(sink.fileno())
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        fsync_directory(directory)
