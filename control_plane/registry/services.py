"""Uploading and reading model versions.

Invariants:
- A version is stored only if its ONNX passes `inspect_model` and each dataset it comes with passes
  `load_samples` against the model's inputs; otherwise the upload is a 422 saying why and nothing is
  kept (staging files are removed).
- Files are stored content-addressed (`BlobStore`) before the row that names them is committed, so a
  row never points at a missing blob. A blob whose row then fails (a concurrent duplicate) stays as an
  unreferenced blob; it is harmless and identical content reuses it.
- The row and its `model.uploaded` audit row commit in one transaction; (model, version) is unique:
  a second upload of the same pair is a 409 whatever its content.
- File checks (hashing, ONNX checker, numpy) run in a worker thread; the database is used only from
  the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
from sqlite_utils import Database

from control_plane.audit.schemas import Actor
from control_plane.audit.services import AuditService
from control_plane.clock import Clock
from control_plane.errors import ConflictError, InvalidArgumentError, NotFoundError
from control_plane.pagination import PageRequest
from control_plane.registry.blobs import BlobStore, StagedFile
from control_plane.registry.repositories import ModelVersionRepository
from control_plane.registry.schemas import ModelPage, ModelVersionInfo, ModelVersionPage
from model_compiler.datasets import load_samples
from model_compiler.errors import DatasetError, InvalidModelError
from model_compiler.inspection import ModelInfo, inspect_model
from protocols.identifiers import ModelName, Version


@dataclass(frozen=True, slots=True)
class _Checked:
    model: ModelInfo
    onnx: StagedFile
    calibration: StagedFile | None
    validation: StagedFile | None


class RegistryService:
    def __init__(self, db: Database, blobs: BlobStore, audit: AuditService, clock: Clock) -> None:
        self._db = db
        self._versions = ModelVersionRepository(db)
        self._blobs = blobs
        self._audit = audit
        self._clock = clock

    async def upload(
        self,
        actor: Actor,
        *,
        name: str,
        version: str | None,
        model: IO[bytes],
        calibration: IO[bytes] | None,
        validation: IO[bytes] | None,
    ) -> ModelVersionInfo:
        """Check and store an uploaded model version; `version` None (or "") picks the next integer."""
        name = _checked(name, ModelName, "name")
        version = _checked(version, Version, "version") if version else None
        if version is not None:
            self._refuse_existing(name, version)
        checked = await asyncio.to_thread(self._check_and_store, model, calibration, validation)
        with self._db.atomic():
            version = version or self._versions.next_integer_version(name)
            self._refuse_existing(name, version)
            info = ModelVersionInfo(
                model=name,
                version=version,
                onnx_sha256=checked.onnx.sha256,
                onnx_size=checked.onnx.size,
                calibration_sha256=None if checked.calibration is None else checked.calibration.sha256,
                validation_sha256=None if checked.validation is None else checked.validation.sha256,
                opset=checked.model.opset,
                inputs=list(checked.model.inputs),
                outputs=list(checked.model.outputs),
                created_at=self._clock.now(),
                created_by=actor.id,
            )
            self._versions.insert(info)
            self._audit.record(
                actor,
                "model.uploaded",
                f"model:{name}/{version}",
                {"sha256": info.onnx_sha256, "size": info.onnx_size},
            )
        return info

    def list_models(self, page: PageRequest) -> ModelPage:
        items, total = self._versions.models_page(limit=page.limit, offset=page.offset)
        return ModelPage(items=items, total=total, limit=page.limit, offset=page.offset)

    def list_versions(self, name: str, page: PageRequest) -> ModelVersionPage:
        items, total = self._versions.versions_page(name, limit=page.limit, offset=page.offset)
        if total == 0:
            raise NotFoundError("model", name)
        return ModelVersionPage(items=items, total=total, limit=page.limit, offset=page.offset)

    def get(self, name: str, version: str) -> ModelVersionInfo:
        info = self._versions.get(name, version)
        if info is None:
            raise NotFoundError("model version", f"{name}/{version}")
        return info

    def onnx_path(self, info: ModelVersionInfo) -> Path:
        return self._blobs.path(info.onnx_sha256)

    def _refuse_existing(self, name: str, version: str) -> None:
        if self._versions.get(name, version) is not None:
            raise ConflictError(f"model {name!r} already has version {version!r}")

    def _check_and_store(
        self, onnx: IO[bytes], calibration: IO[bytes] | None, validation: IO[bytes] | None
    ) -> _Checked:
        staged: list[StagedFile] = []
        try:
            onnx_file = self._stage(onnx, ".onnx", staged)
            try:
                model = inspect_model(onnx_file.path)
            except InvalidModelError as e:
                raise InvalidArgumentError("model", f"not a usable ONNX model: {e.reason}") from e
            datasets: dict[str, StagedFile | None] = {}
            for field, upload in (("calibration", calibration), ("validation", validation)):
                if upload is None:
                    datasets[field] = None
                    continue
                dataset = datasets[field] = self._stage(upload, ".npz", staged)
                try:
                    load_samples(dataset.path, model.inputs)
                except DatasetError as e:
                    raise InvalidArgumentError(field, e.reason) from e
        except BaseException:
            for file in staged:
                self._blobs.discard(file)
            raise
        for file in staged:
            self._blobs.commit(file)
        return _Checked(
            model=model,
            onnx=onnx_file,
            calibration=datasets["calibration"],
            validation=datasets["validation"],
        )

    def _stage(self, source: IO[bytes], suffix: str, staged: list[StagedFile]) -> StagedFile:
        source.seek(0)
        file = self._blobs.stage(source, suffix=suffix)
        staged.append(file)
        return file


def _checked(value: str, kind: object, field: str) -> str:
    try:
        return str(msgspec.convert(value, kind))
    except msgspec.ValidationError as e:
        raise InvalidArgumentError(field, str(e)) from e
