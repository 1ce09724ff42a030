"""Artifacts: list, manifest, download; and upload, so that a CLI on another machine can deploy a
file it has (content-addressed: the same bytes are stored once)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from host.api.context import ApiContext
from host.api.deps import Ctx, Operator, Reader
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, ErrorBody, not_found
from host.api.models import ArtifactSummary
from host.artifacts import ArtifactError, ArtifactTooLargeError, manifest_for_file
from host.store.models import ArtifactRow
from shared.errors import ValidationError

router = APIRouter(tags=["artifacts"])

FILENAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}\.(tflite|onnx|npz)$"
WRITE_CHUNK = 1024**2  # bytes gathered from the request before one write to disk


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


def _store_upload(ctx: ApiContext, tmp: Path, filename: str, sha256: str) -> dict[str, Any]:
    """Inspect the received file within the upload limits, then keep it under its hash (off the
    event loop: parsing may take seconds, and runs in a bounded worker process)."""
    try:
        manifest = manifest_for_file(
            tmp, name=Path(filename).stem[:128], label=filename, limits=ctx.upload_limits
        )
    except ArtifactTooLargeError as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except (ArtifactError, ValidationError) as exc:
        raise ApiError(422, "invalid_artifact", str(exc)) from None
    final = ctx.artifact_dir / f"{sha256}{Path(filename).suffix}"
    os.replace(tmp, final)
    doc = msgspec.to_builtins(manifest)
    ctx.store.add_artifact(doc, str(final))
    return doc


def _open_incoming(ctx: ApiContext, suffix: str) -> tuple[int, str]:
    ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=ctx.artifact_dir, prefix=".incoming-", suffix=suffix)


@router.post("/artifacts", response_model=dict[str, Any], status_code=201,
             dependencies=[Operator],
             responses={**ERRORS, **AUTH_ERRORS,
                        413: {"model": ErrorBody, "description": "the file, or what it inflates "
                              "to, is larger than the service takes"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
             )  # fmt: skip
async def upload(
    ctx: Ctx,
    request: Request,
    filename: Annotated[
        str,
        Query(
            pattern=FILENAME_PATTERN,
            description="e.g. model.tflite; the suffix names the format (.tflite, .onnx or .npz)",
        ),
    ],
) -> dict[str, Any]:
    """Store a .tflite, .onnx or eval .npz (the request body); returns its manifest.

    The body is written to disk as it arrives, up to the service's size limit (413 past it);
    then the file is inspected off the event loop: an .npz from its headers alone (413 when its
    arrays would inflate past the limit), a model in a worker process bounded in memory and time.
    A file that is not what its name says is a 422; nothing of a refused upload is kept.
    """
    limits = ctx.upload_limits
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise ApiError(413, "too_large", f"artifacts are at most {limits.max_bytes} bytes")
    fd, tmp = await run_in_threadpool(_open_incoming, ctx, Path(filename).suffix)
    digest, size, pending = hashlib.sha256(), 0, bytearray()
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ApiError(
                        413, "too_large", f"artifacts are at most {limits.max_bytes} bytes"
                    )
                digest.update(chunk)
                pending += chunk
                if len(pending) >= WRITE_CHUNK:
                    await run_in_threadpool(out.write, bytes(pending))
                    pending.clear()
            await run_in_threadpool(out.write, bytes(pending))
        if size == 0:
            raise ApiError(422, "invalid_request", "the request body (the file) is empty")
        return await run_in_threadpool(_store_upload, ctx, Path(tmp), filename, digest.hexdigest())
    finally:
        Path(tmp).unlink(missing_ok=True)  # kept files were moved to their final name
