"""Uploads to the service are bounded: the body by a byte cap as it streams, an .npz by what its
headers declare before any array is inflated, a .tflite/.onnx by a worker process with an
address-space bound; every refusal is a 413 or a 422 in one line that names the file as the client
called it, never a path on the server, and nothing of a refused upload is kept. The same bomb
against a live `edgetailor serve`, with its memory and /healthz measured: tests/e2e/
test_service_uploads.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.npz_bombs import write_npz_bomb
from host.api import ApiContext, create_app
from host.artifacts import UploadLimits
from host.store import Store
from host.store.service import ServiceStore

SMALL = UploadLimits(max_bytes=1024**2, max_array_bytes=8 * 1024**2)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ApiContext]:
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as store:
        yield ApiContext(store=store, artifact_dir=tmp_path / "artifacts", upload_limits=SMALL)


@pytest.fixture
def client(ctx: ApiContext) -> Iterator[TestClient]:
    token = ServiceStore(ctx.store).new_token()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(ctx), base_url="http://127.0.0.1", headers=headers) as api:
        yield api


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["pixels"], ["scores"])],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _post(client: TestClient, name: str, content: object) -> object:
    return client.post("/api/v1/artifacts", params={"filename": name}, content=content)


def _kept(ctx: ApiContext) -> list[str]:
    return sorted(p.name for p in ctx.artifact_dir.iterdir()) if ctx.artifact_dir.exists() else []


def _one_line_without_server_paths(response: object, ctx: ApiContext) -> str:
    message = response.json()["error"]["message"]  # type: ignore[attr-defined]
    assert "\n" not in message and str(ctx.artifact_dir.parent) not in message
    return message


def test_an_npz_whose_arrays_inflate_past_the_limit_is_refused_from_its_headers(
    client: TestClient, ctx: ApiContext, tmp_path: Path
) -> None:
    bomb = write_npz_bomb(tmp_path / "bomb.npz", (16, 1024, 1024), "<u1")  # 16 MiB of zeros
    assert bomb.stat().st_size < 64 * 1024  # well under the byte cap: only inflating is big
    refused = _post(client, "eval.npz", bomb.read_bytes())
    assert refused.status_code == 413
    message = _one_line_without_server_paths(refused, ctx)
    assert message.startswith("eval.npz inflates to 16 MiB") and "8 MiB" in message
    assert _kept(ctx) == [] and client.get("/api/v1/artifacts").json() == []


def test_an_npz_whose_zip_directory_lies_about_its_size_is_refused_without_inflating_it(
    client: TestClient, ctx: ApiContext, tmp_path: Path
) -> None:
    bomb = write_npz_bomb(tmp_path / "lie.npz", (16, 1024, 1024), "<u1", lie=True)
    refused = _post(client, "eval.npz", bomb.read_bytes())
    assert refused.status_code == 422
    assert _one_line_without_server_paths(refused, ctx).startswith("eval.npz is not a readable")
    assert _kept(ctx) == []


def test_arrays_that_are_each_small_but_together_past_the_limit_are_refused(
    client: TestClient, ctx: ApiContext, tmp_path: Path
) -> None:
    path = tmp_path / "many.npz"
    np.savez_compressed(path, **{f"x{i}": np.zeros(3 * 1024**2, np.uint8) for i in range(3)})
    refused = _post(client, "many.npz", path.read_bytes())
    assert refused.status_code == 413 and "9 MiB" in _one_line_without_server_paths(refused, ctx)


def test_an_npz_of_python_objects_is_refused(
    client: TestClient, ctx: ApiContext, tmp_path: Path
) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    refused = _post(client, "objects.npz", path.read_bytes())
    assert refused.status_code == 422
    assert "Python objects" in _one_line_without_server_paths(refused, ctx)


def test_a_body_past_the_byte_cap_is_refused_while_it_streams_and_nothing_stays_on_disk(
    client: TestClient, ctx: ApiContext
) -> None:

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is met while reading
        for _ in range(64):
            yield bytes(64 * 1024)

    refused = _post(client, "model.tflite", chunks())
    assert refused.status_code == 413 and "at most 1048576 bytes" in refused.text
    assert _kept(ctx) == []
    declared = _post(client, "model.tflite", bytes(SMALL.max_bytes + 1))
    assert declared.status_code == 413 and _kept(ctx) == []


def test_a_model_is_parsed_in_a_worker_process_whose_memory_is_bounded(
    client: TestClient, ctx: ApiContext, onnx_file: Path
) -> None:
    stored = _post(client, "tiny.onnx", onnx_file.read_bytes())
    assert stored.status_code == 201, stored.text
    assert [t["name"] for t in stored.json()["inputs"]] == ["pixels"]
    # A bound no parser fits in: the worker runs out of memory, the service answers 413.
    ctx.upload_limits = dataclasses.replace(
        SMALL, parse_memory_bytes=64 * 1024**2, parse_memory_per_byte=0
    )
    copy = onnx_file.read_bytes() + b"\xf8\x07\x01"  # an unknown field 127: other bytes, same model
    refused = _post(client, "other.onnx", copy)
    assert refused.status_code == 413
    assert "64 MiB" in _one_line_without_server_paths(refused, ctx)
    assert len(_kept(ctx)) == 1  # the first one only


def test_a_file_that_is_not_what_its_name_says_is_422_naming_the_clients_name(
    client: TestClient, ctx: ApiContext
) -> None:
    for name in ("model.tflite", "model.onnx", "eval.npz"):
        refused = _post(client, name, b"\x00garbage" * 100)
        assert refused.status_code == 422, name
        assert _one_line_without_server_paths(refused, ctx).startswith(name)
    # Past the cheap checks (the TFL3 identifier, protobuf framing), the parser itself refuses.
    lying = _post(client, "model.tflite", b"\x00" * 4 + b"TFL3" + b"\x00" * 100)
    assert lying.status_code == 422
    assert _one_line_without_server_paths(lying, ctx).startswith("model.tflite is not a valid")
    assert _kept(ctx) == []
