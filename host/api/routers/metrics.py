"""Prometheus metrics at ``/metrics``, read from the database at scrape time, so that every
replica reports the same fleet: devices online, commands by kind and state, transfer bytes,
result latency, deployments by state. Messages this process dropped (unsigned, badly signed,
chunk requests no command allows, ...) are counted per process, by topic and reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import func, select

from host.api.deps import Ctx, Reader
from host.api.errors import AUTH_ERRORS
from host.commands.kinds import KINDS
from host.commands.models import CommandRow
from host.store import Store
from host.store.deployments import DeploymentStore
from host.store.models import ArtifactRow, DeviceRow
from host.store.service import ServiceStore
from shared.results import BenchmarkResult

router = APIRouter(tags=["metrics"])

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class StoreCollector:
    """A prometheus-client collector over the host's tables."""

    def __init__(self, store: Store, fleet: Any = None) -> None:
        self.store = store
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        with self.store.read() as session:
            online = session.execute(
                select(DeviceRow.online, func.count()).group_by(DeviceRow.online)
            ).all()
            jobs = session.execute(
                select(CommandRow.kind, CommandRow.state, func.count()).group_by(
                    CommandRow.kind, CommandRow.state
                )
            ).all()
            latencies = session.execute(
                select(
                    CommandRow.finished - CommandRow.created, CommandRow.result, CommandRow.kind
                ).where(
                    CommandRow.response_msg_id.is_not(None),
                    CommandRow.kind.in_(("benchmark", "deploy", "rollback")),
                )
            ).all()
            sizes = dict(session.execute(select(ArtifactRow.sha256, ArtifactRow.size_bytes)).all())
        devices = GaugeMetricFamily(
            "edgetailor_devices", "devices known to the host, by online state", labels=["online"]
        )
        counts = {bool(state): int(n) for state, n in online}
        for state in (True, False):
            devices.add_metric(["true" if state else "false"], counts.get(state, 0))
        yield devices
        yield GaugeMetricFamily(
            "edgetailor_devices_online", "devices online now", value=counts.get(True, 0)
        )
        by_state = GaugeMetricFamily(
            "edgetailor_jobs", "commands to devices (benchmark, deploy, rollback, ack, ...) by "
            "state", labels=["kind", "state"],
        )  # fmt: skip
        for kind, status, n in jobs:
            by_state.add_metric([kind, status], int(n))
        yield by_state
        service = GaugeMetricFamily(
            "edgetailor_service_jobs", "campaign jobs of the service by state", labels=["state"]
        )
        for state, n in ServiceStore(self.store).counts_by_state().items():
            service.add_metric([state], n)
        yield service
        yield from self._results(latencies, sizes)
        dstore = DeploymentStore(self.store)
        targets = GaugeMetricFamily(
            "edgetailor_deployment_targets", "devices' deploys by state", labels=["state"]
        )
        for state, n in dstore.counts_by_state().items():
            targets.add_metric([state], n)
        yield targets
        rollouts = GaugeMetricFamily(
            "edgetailor_deployments", "rollouts by status", labels=["status"]
        )
        for status, n in dstore.rollout_counts_by_status().items():
            rollouts.add_metric([status], n)
        yield rollouts
        dropped = CounterMetricFamily(
            "edgetailor_dropped_messages", "device messages this host process dropped: unsigned, "
            "badly signed, signed by a key not pinned, chunk requests no open command allows, "
            "responses to commands sent elsewhere", labels=["topic", "reason"],
        )  # fmt: skip
        counts = self.fleet.drop_counts() if self.fleet is not None else {}
        for (topic, reason), n in sorted(counts.items()):
            dropped.add_metric([topic, reason], n)
        yield dropped

    @staticmethod
    def _results(rows: list[Any], sizes: dict[str, int]) -> Iterator[Metric]:
        buckets = [0] * len(LATENCY_BUCKETS)
        total, transferred = 0.0, 0
        benchmark = KINDS.get("benchmark")
        for seconds, data, kind in rows:
            seconds = max(0.0, float(seconds))
            total += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            if kind != "benchmark" or data is None:
                continue
            result = benchmark.decode_result(data)
            if not isinstance(result, BenchmarkResult):
                continue
            for transfer in result.transfers:
                if not transfer.already_stored:
                    transferred += int(sizes.get(transfer.sha256, 0))
        histogram = HistogramMetricFamily(
            "edgetailor_result_latency_seconds",
            "time from sending a device job to storing its final result",
        )
        histogram.add_metric(
            [], [(str(b) if b != float("inf") else "+Inf", n) for b, n in zip(LATENCY_BUCKETS, buckets, strict=True)],
            sum_value=total,
        )  # fmt: skip
        yield histogram
        yield CounterMetricFamily(
            "edgetailor_transfer_bytes",
            "artifact bytes devices fetched from the host (whole artifacts their results report "
            "as fetched, not already stored)",
            value=transferred,
        )


@router.get("/metrics", dependencies=[Reader], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
                       **AUTH_ERRORS})  # fmt: skip
def metrics(ctx: Ctx) -> Response:
    """Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(ctx.store, ctx.fleet))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
