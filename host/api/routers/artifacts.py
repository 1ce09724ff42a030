"""Artifacts: list, manifest, download; and upload, so that a CLI on another machine can deploy a
file it has (content-addressed: the same bytes are stored once)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy import select

from host.api.deps import Ctx, Reader, Writer
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, not_found
from host.api.models import ArtifactSummary
from host.artifacts import manifest_for_file
from host.store.models import ArtifactRow
from shared.errors import EdgeTailorError

router = APIRouter(tags=["artifacts"])

MAX_UPLOAD_BYTES = 2 * 1024**3
_SHA = r"^[0-9a-f]{64}$"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}\.(tflite|onnx|npz)$")


@router.get("/artifacts", response_model=list[ArtifactSummary], dependencies=[Reader],
            responses=AUTH_ERRORS)  # fmt: skip
def list_artifacts(ctx: Ctx) -> list[dict[str, Any]]:
    """Every artifact recorded in the database, newest first."""
    with ctx.store.read() as session:
        rows = session.scalars(select(ArtifactRow).order_by(ArtifactRow.created.desc())).all()
        return [
            {
                "sha256": r.sha256,
                "name": r.name,
                "format": r.format,
                "precision": r.precision,
                "size_bytes": r.size_bytes,
                "created": r.created,
                "downloadable": bool(r.path and Path(r.path).is_file()),
            }
            for r in rows
        ]


def _artifact(ctx: Ctx, sha256: str) -> dict[str, Any]:
    artifact = ctx.store.get_artifact(sha256)
    if artifact is None:
        raise not_found("artifact", sha256, "list them with GET /api/v1/artifacts")
    return artifact


@router.get("/artifacts/{sha256}", response_model=dict[str, Any], dependencies=[Reader],
            responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def get_manifest(ctx: Ctx, sha256: str) -> dict[str, Any]:
    """The artifact's manifest (shared/manifest.py): hash, size, format, tensors, recipe."""
    return _artifact(ctx, sha256)["manifest"]


@router.get("/artifacts/{sha256}/download", dependencies=[Reader],
            response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS,
                       **AUTH_ERRORS})  # fmt: skip
def download(ctx: Ctx, sha256: str) -> FileResponse:
    """The artifact's bytes."""
    artifact = _artifact(ctx, sha256)
    path = artifact.get("path")
    if not path or not Path(path).is_file():
        raise ApiError(404, "not_found", f"artifact {sha256} is recorded but its file is gone")
    manifest = artifact["manifest"]
    suffix = {"tflite": ".tflite", "onnx": ".onnx", "npz": ".npz"}.get(manifest["format"], "")
    return FileResponse(
        path, media_type="application/octet-stream",
        filename=f"{manifest.get('name') or sha256[:12]}{suffix}",
    )  # fmt: skip


@router.post("/artifacts", response_model=dict[str, Any], status_code=201,
             dependencies=[Writer], responses={**ERRORS, **AUTH_ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
             )  # fmt: skip
async def upload(
    ctx: Ctx,
    request: Request,
    filename: Annotated[str, Query(description="e.g. model.tflite; the suffix names the format")],
) -> dict[str, Any]:
    """Store a .tflite, .onnx or eval .npz (the request body); returns its manifest."""
    if not _NAME.match(filename):
        raise ApiError(
            422, "invalid_request",
            f"filename {filename!r}: give a plain name ending in .tflite, .onnx or .npz",
        )  # fmt: skip
    ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=ctx.artifact_dir, suffix=Path(filename).suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise ApiError(413, "too_large", "artifacts are at most 2 GiB")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ApiError(422, "invalid_request", "the request body (the file) is empty")
        final = ctx.artifact_dir / f"{digest.hexdigest()}{Path(filename).suffix}"
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        manifest = manifest_for_file(final, name=Path(filename).stem[:128])
    except EdgeTailorError:
        final.unlink(missing_ok=True)  # not a model the fleet could run: keep nothing
        raise
    doc = msgspec.to_builtins(manifest)
    ctx.store.add_artifact(doc, str(final))
    return doc
