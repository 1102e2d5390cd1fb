"""REST and service values of the model registry.

The upload form (`ModelUpload`, multipart) lives with the controller, which is the only place that
touches Litestar; everything answered is a frozen Struct. Tensor specs
are the wire `TensorSpec` of `protocols.manifest`, so a model version reads the same everywhere.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from protocols.manifest import TensorSpec


class ModelVersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    version: str
    onnx_sha256: str
    onnx_size: int
    calibration_sha256: str | None
    validation_sha256: str | None
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    created_at: datetime
    created_by: str
    """Id of the token that uploaded it."""


class ModelSummary(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    latest_version: str
    """The most recently uploaded version."""
    version_count: int
    updated_at: datetime


class ModelPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ModelSummary]
    total: int
    limit: int
    offset: int


class ModelVersionPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ModelVersionInfo]
    total: int
    limit: int
    offset: int
