"""The predictor's data: every benchmark result stored in the host's database, with the file it
measured (its graph features, read once and cached) and the board's class (its stored birth)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.commands.models import ANSWERED
from host.commands.repository import CommandStore
from host.search.predictor.features import (
    FEATURES_VERSION,
    BoardClass,
    FeatureError,
    GraphFeatures,
    graph_features,
    vector,
)
from host.search.predictor.model import Prediction, Predictor, TrainingRow
from shared.errors import ValidationError
from shared.results import BenchmarkResult

if TYPE_CHECKING:
    from host.search.store import SearchStore
    from host.store import Store

logger = logging.getLogger(__name__)


class FeatureCache:
    """Graph features per artifact sha256: from the database, else read from the file once."""

    def __init__(self, sstore: SearchStore) -> None:
        self.sstore = sstore
        self._memo: dict[str, GraphFeatures | None] = {}

    def get(
        self, sha256: str, path: str | Path | None, precision: str | None = None
    ) -> GraphFeatures | None:
        if sha256 in self._memo:
            return self._memo[sha256]
        cached = self.sstore.features(sha256, FEATURES_VERSION)
        found: GraphFeatures | None = None
        if cached is not None:
            found = GraphFeatures.from_dict(cached)
        elif path is not None and Path(path).is_file():
            try:
                found = graph_features(path, precision)
            except FeatureError as exc:
                logger.info("no graph features for %s: %s", sha256[:12], exc)
            else:
                self.sstore.put_features(sha256, FEATURES_VERSION, found.to_dict())
        self._memo[sha256] = found
        return found


def board_class_of(store: Store, device_id: str) -> BoardClass | None:
    """The class of a device from its stored birth; None when it never announced one."""
    device = store.get_device(device_id)
    if device is None or not device.birth:
        return None
    return BoardClass.from_birth(device.birth)


def runtime_of(result: BenchmarkResult, graph: GraphFeatures) -> str:
    backend = (result.backend or "").lower()
    return backend if backend in ("tflite", "onnx") else graph.format


def training_rows(
    store: Store, sstore: SearchStore, exclude_sha256: set[str] | None = None
) -> list[TrainingRow]:
    """Every ok benchmark result the store holds whose file and board are known."""
    cache = FeatureCache(sstore)
    classes: dict[str, BoardClass | None] = {}
    rows: list[TrainingRow] = []
    answered = CommandStore(store).list(kinds=("benchmark",), states=(ANSWERED,))
    for stored in answered:
        try:
            result = stored.result_as(BenchmarkResult)
        except ValidationError:
            continue
        if result is None:
            continue
        if exclude_sha256 and result.model_sha256 in exclude_sha256:
            continue
        if stored.device_id not in classes:
            classes[stored.device_id] = board_class_of(store, stored.device_id)
        board = classes[stored.device_id]
        if board is None:
            continue
        artifact = store.get_artifact(result.model_sha256)
        graph = cache.get(
            result.model_sha256,
            artifact.get("path") if artifact else None,
            (artifact or {}).get("manifest", {}).get("precision"),
        )
        if graph is None:
            continue
        rows.append(
            TrainingRow(
                x=vector(graph, result.threads, runtime_of(result, graph), board),
                board=board,
                p90_ms=float(result.latency_ms.p90),
                peak_rss_mb=float(result.peak_rss_mb),
                macs=graph.macs,
                job_id=result.job_id,
                device=stored.device_id,
                sha256=result.model_sha256,
            )
        )
    return rows


def fit_predictor(
    store: Store, sstore: SearchStore, *, exclude_sha256: set[str] | None = None, seed: int = 0
) -> Predictor:
    """A predictor fitted on every stored result (less the files in ``exclude_sha256``)."""
    return Predictor(seed).fit(training_rows(store, sstore, exclude_sha256))


def predict_file(
    predictor: Predictor,
    graph: GraphFeatures,
    board: BoardClass,
    threads: int | None,
    runtime: str,
) -> Prediction:
    return predictor.predict(vector(graph, threads, runtime, board), graph.macs, board)


def describe_prediction(prediction: Prediction) -> dict[str, Any]:
    return prediction.to_dict()


__all__ = [
    "FeatureCache",
    "board_class_of",
    "fit_predictor",
    "predict_file",
    "training_rows",
]
