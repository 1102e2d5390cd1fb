"""`edgefabric models push|list`: the model registry through the REST API (operator token to push).

`push` streams a multipart upload from disk; for files past `PROGRESS_MIN_BYTES` it reports progress
on stderr. Errors (a 422 saying why the model was refused, a 409 for an existing version) are one line
and exit code 1, through `run_cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from control_plane.client import ApiClient, add_client_arguments
from control_plane.errors import ConfigError
from control_plane.pagination import MAX_PAGE_LIMIT
from control_plane.registry.schemas import ModelPage, ModelSummary, ModelVersionInfo
from protocols.cli_support import EXIT_OK, Progress, render_table

PROGRESS_MIN_BYTES = 4 * 1024 * 1024
_PROGRESS_STEPS = 20
_LIST_HEADERS = ("NAME", "LATEST", "VERSIONS", "UPDATED")


def add_model_commands(commands: argparse._SubParsersAction[Any], environ: Mapping[str, str]) -> None:
    models = commands.add_parser("models", help="upload and list models in the control plane's registry")
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    push = actions.add_parser("push", help="upload an ONNX model as a new version")
    push.add_argument("model", metavar="MODEL.onnx", type=Path)
    push.add_argument("--name", required=True, help="model name (letters, digits, _ -; at most 64)")
    push.add_argument("--version", help="version (default: the next integer for this model)")
    push.add_argument("--calibration", metavar="FILE.npz", type=Path, help="calibration samples")
    push.add_argument("--validation", metavar="FILE.npz", type=Path, help="validation samples (+ labels)")
    add_client_arguments(push, environ)
    push.set_defaults(handler=_push)

    listing = actions.add_parser("list", help="models with their latest version")
    add_client_arguments(listing, environ)
    listing.set_defaults(handler=_list)


def _push(args: argparse.Namespace) -> int:
    files = {"model": args.model}
    for field in ("calibration", "validation"):
        if getattr(args, field) is not None:
            files[field] = getattr(args, field)
    for path in files.values():
        if not path.is_file():
            raise ConfigError("flags", f"{path}: no such file")
    fields = {"name": args.name, **({} if args.version is None else {"version": args.version})}
    client = ApiClient.from_args(args)
    total_bytes = sum(path.stat().st_size for path in files.values())
    progress = _UploadProgress(total_bytes) if total_bytes >= PROGRESS_MIN_BYTES else None
    try:
        pushed = client.upload(
            "/api/v1/models",
            ModelVersionInfo,
            fields=fields,
            files=files,
            progress=None if progress is None else progress.update,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        _print_json(pushed)
    else:
        print(
            f"pushed {pushed.model} version {pushed.version} "
            f"(sha256 {pushed.onnx_sha256}, {pushed.onnx_size} bytes, opset {pushed.opset})"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    items: list[ModelSummary] = []
    while True:
        page = client.call(
            "GET", "/api/v1/models", ModelPage, query={"limit": MAX_PAGE_LIMIT, "offset": len(items)}
        )
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            break
    if args.json:
        _print_json(items)
    else:
        rows = [
            [m.name, m.latest_version, m.version_count, m.updated_at.strftime("%Y-%m-%d %H:%M")]
            for m in items
        ]
        print(render_table(_LIST_HEADERS, rows))
    return EXIT_OK


class _UploadProgress:
    """Redraws (on a terminal) or logs a line each time another 1/20th of the upload has been sent."""

    def __init__(self, total_bytes: int) -> None:
        self._total_bytes = total_bytes
        self._progress = Progress(_PROGRESS_STEPS)

    def update(self, sent_bytes: int, total_bytes: int) -> None:
        reached = _PROGRESS_STEPS * sent_bytes // max(total_bytes, 1)
        if reached <= self._progress.done:
            return
        while self._progress.done < reached:
            self._progress.advance()
        self._progress.step("upload", f"{sent_bytes // 1024} / {total_bytes // 1024} KiB")

    def close(self) -> None:
        self._progress.close()


def _print_json(value: object) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())
