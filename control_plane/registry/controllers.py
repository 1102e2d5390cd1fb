"""`/api/v1/models`: upload (operator) and read (viewer) model versions; thin adapters over `RegistryService`.

Uploads are multipart: Litestar spools each file part to a temporary file (on disk past 1 MiB), so a
large model is not held in memory; the whole request is capped by the server's `max_upload_bytes`
(413 beyond it; every other route keeps the smaller `max_body_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import File, Stream

from control_plane.auth.access import BEARER, requires
from control_plane.auth.schemas import Identity
from control_plane.auth.tokens import Role
from control_plane.pagination import PageRequest
from control_plane.registry.schemas import ModelPage, ModelVersionInfo, ModelVersionPage
from control_plane.registry.services import RegistryService
from control_plane.web.body_limit import UPLOAD_ROUTE
from control_plane.web.errors import error_responses
from control_plane.web.ranges import ranged_file

AuthedRequest = Request[Identity, Any, Any]


@dataclass
class ModelUpload:
    """`POST /api/v1/models` (multipart/form-data).

    `model` is the ONNX file; `calibration` and `validation` are optional `.npz` sample sets checked
    against the model's inputs. `version` defaults to the next integer for `name`.
    """

    name: str
    model: UploadFile
    version: str | None = None
    calibration: UploadFile | None = None
    validation: UploadFile | None = None


class ModelController(Controller):
    path = "/models"
    tags = ("models",)
    opt = requires(Role.VIEWER)
    security = BEARER

    @post(
        "/",
        status_code=201,
        opt={**requires(Role.OPERATOR), **UPLOAD_ROUTE},
        responses=error_responses(400, 401, 403, 409, 413, 422, 429),
    )
    async def upload_model(
        self,
        data: Annotated[ModelUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
        request: AuthedRequest,
        registry: NamedDependency[RegistryService],
    ) -> ModelVersionInfo:
        """Upload a model version: the ONNX file `model`, optional `calibration`/`validation` .npz.

        The ONNX is checked (checker, shape inference, opset) and the datasets against its inputs: a
        file that fails is a 422 saying why. An existing (name, version) is a 409.
        """
        return await registry.upload(
            request.user.actor,
            name=data.name,
            version=data.version,
            model=data.model.file,
            calibration=None if data.calibration is None else data.calibration.file,
            validation=None if data.validation is None else data.validation.file,
        )

    @get("/", responses=error_responses(400, 401, 403, 429))
    async def list_models(
        self, page: NamedDependency[PageRequest], registry: NamedDependency[RegistryService]
    ) -> ModelPage:
        """Models by name, each with its latest version and number of versions."""
        return registry.list_models(page)

    @get("/{name:str}/versions", responses=error_responses(400, 401, 403, 404, 429))
    async def list_versions(
        self,
        name: FromPath[str],
        page: NamedDependency[PageRequest],
        registry: NamedDependency[RegistryService],
    ) -> ModelVersionPage:
        """The versions of a model, newest first."""
        return registry.list_versions(name, page)

    @get("/{name:str}/versions/{version:str}", responses=error_responses(401, 403, 404, 429))
    async def get_version(
        self, name: FromPath[str], version: FromPath[str], registry: NamedDependency[RegistryService]
    ) -> ModelVersionInfo:
        return registry.get(name, version)

    @get(
        "/{name:str}/versions/{version:str}/download",
        media_type="application/octet-stream",
        responses=error_responses(401, 403, 404, 416, 429),
    )
    async def download_version(
        self,
        name: FromPath[str],
        version: FromPath[str],
        request: AuthedRequest,
        registry: NamedDependency[RegistryService],
    ) -> File | Stream:
        """The ONNX bytes of a model version; one `Range: bytes=a-b` answers 206 with that part."""
        info = registry.get(name, version)
        return ranged_file(
            registry.onnx_path(info),
            info.onnx_size,
            request.headers.get("range"),
            filename=f"{name}-{version}.onnx",
        )
