"""Publishing a signed repository to the JetStream Object Store, where NATS devices fetch it.

Metadata files go to `METADATA_BUCKET` under their file names (`1.root.json`, `timestamp.json`,
`N.snapshot.json`, `N.targets.json`); every target archive goes to `ARTIFACT_BUCKET` under its
content address (`sha256-<hex>`), so an archive is uploaded once however many releases name it.
`timestamp.json` is published last: a device never sees a timestamp whose files are missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from model_compiler.signing.release import METADATA_DIRNAME, TARGETS_DIRNAME
from protocols import subjects
from protocols.transports.nats_objects import NatsObjects

_TIMESTAMP = "timestamp.json"


@dataclass(frozen=True, slots=True)
class Publication:
    metadata_files: int
    archives_uploaded: int
    archives_present: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def publish_repository(objects: NatsObjects, repo_dir: Path) -> Publication:
    """Upload what devices need from `repo_dir` (idempotent: present archives are skipped)."""
    present = set(await objects.list_names(subjects.ARTIFACT_BUCKET))
    uploaded = skipped = 0
    for archive in sorted((repo_dir / TARGETS_DIRNAME).rglob("*.tar")):
        name = subjects.artifact_object_name(_sha256(archive))
        if name in present:
            skipped += 1
            continue
        await objects.put_file(subjects.ARTIFACT_BUCKET, name, archive)
        present.add(name)
        uploaded += 1
    metadata = sorted(p for p in (repo_dir / METADATA_DIRNAME).iterdir() if p.suffix == ".json")
    for path in [p for p in metadata if p.name != _TIMESTAMP] + [p for p in metadata if p.name == _TIMESTAMP]:
        await objects.put_file(subjects.METADATA_BUCKET, path.name, path)
    return Publication(metadata_files=len(metadata), archives_uploaded=uploaded, archives_present=skipped)
