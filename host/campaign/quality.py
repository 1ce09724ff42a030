"""What a benchmark result says about quality, judged on the host against the campaign's baseline.

The board scores the eval set with shared.scoring, as the host does; this module judges its result
(:class:`Judgement`): the baseline it is compared with and the *paired* 95% interval of its drop
from it (the baseline's per-sample scores against the board's, on the same samples). With a user
metric, the board also sent the raw outputs of the eval set back: the metric is computed here, on
those outputs, with the function the host used for its own run of the file. A campaign stores the
judgement beside the job; the result itself stays the agent's BenchmarkResult, stored once with its
command (host.commands), and :func:`result_row` puts the two together for selection and report.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from host.errors import HostError
from host.metrics import score_user_metric, user_metric_drop_interval, user_outputs
from host.select import ResultRow
from shared.scoring import paired_drop_interval

if TYPE_CHECKING:
    from host.campaign.candidates import Prepared
    from host.fleet import Fleet
    from host.store.campaigns import CandidateInfo
    from shared.results import BenchmarkResult

logger = logging.getLogger(__name__)

# After the result, how long the parts of its outputs may take to come in (they are sent first).
OUTPUTS_WAIT_S = 120.0


class QualityError(HostError):
    """A result cannot be judged: its metric is not the campaign's, or its outputs did not come."""


Interval = Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)]


class UserMetric(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A user metric computed on the host from the raw outputs the board sent back."""

    name: str
    value: float
    interval: Interval | None = None


class Judgement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The host's judgement of one benchmark result (stored beside the campaign's job)."""

    baseline_metric: float | None = None
    drop_interval: Interval | None = None  # paired where both sides scored each sample
    user_metric: UserMetric | None = None  # replaces the board's metric when given


def result_row(
    result: BenchmarkResult,
    judgement: Judgement,
    *,
    candidate: str,
    artifact: str,
    device: str,
    recipe: str,
    format: str,
    precision: str,
) -> ResultRow:
    """The selection's row of one measured variant: the agent's result as judged."""

    row = ResultRow.from_benchmark(
        result, candidate=candidate, device=device, recipe=recipe, format=format,
        precision=precision, baseline_metric=judgement.baseline_metric,
        drop_interval=tuple(judgement.drop_interval) if judgement.drop_interval else None,  # type: ignore[arg-type]
    )  # fmt: skip
    custom = judgement.user_metric
    if custom is not None:
        row = dataclasses.replace(
            row, metric=custom.name, metric_value=custom.value,
            metric_interval=tuple(custom.interval) if custom.interval else None,  # type: ignore[arg-type]
        )  # fmt: skip
    return dataclasses.replace(row, artifact=artifact)


def judge_result(
    result: BenchmarkResult,
    cand: CandidateInfo,
    device: str,
    prepared: Prepared,
    fleet: Fleet,
    *,
    outputs_wait_s: float = OUTPUTS_WAIT_S,
) -> Judgement:
    """The host's judgement of one benchmark (see the module doc); QualityError when the
    result cannot be compared with the baseline."""
    expected = prepared.baseline.name if prepared.baseline is not None else None
    if expected is not None and result.metric != expected:
        raise QualityError(
            f"{device} reported {result.metric or 'no metric'} where the campaign scores "
            f"{expected} ({prepared.task}); update its agent so both sides score alike"
        )
    if prepared.user_metric is None:
        drop = _paired_drop(result, prepared)
        return Judgement(
            baseline_metric=prepared.baseline_metric, drop_interval=list(drop) if drop else None
        )
    custom, drop = _score_returned_outputs(result, prepared, fleet, outputs_wait_s)
    interval = custom.interval
    return Judgement(
        baseline_metric=prepared.baseline_metric,
        drop_interval=list(drop) if drop else None,
        user_metric=UserMetric(custom.name, custom.value, list(interval) if interval else None),
    )


def _paired_drop(result: BenchmarkResult, prepared: Prepared) -> tuple[float, float] | None:
    base = prepared.baseline.per_sample if prepared.baseline is not None else None
    cand = result.sample_scores
    if base is None or cand is None or len(base) != len(cand):
        return None  # from_benchmark falls back to the metric's interval, baseline fixed
    return paired_drop_interval(base, cand)


def _score_returned_outputs(
    result: BenchmarkResult, prepared: Prepared, fleet: Fleet, wait_s: float
) -> tuple[Any, tuple[float, float] | None]:
    import numpy as np

    metric = prepared.user_metric
    split = prepared.split
    if metric is None or split is None:
        raise QualityError("no user metric to score")
    if result.outputs is None:
        raise QualityError(
            f"job {result.job_id} came back without its eval outputs, which {metric.spec} needs"
        )
    path = fleet.outputs.wait(result.job_id, result.outputs, wait_s)
    if path is None:
        raise QualityError(
            f"the eval outputs of job {result.job_id} ({result.outputs.parts} parts) did not all "
            f"arrive within {wait_s:.0f} s of its result"
        )
    with np.load(path, allow_pickle=False) as data:
        count = len(data.files)
        outputs = user_outputs([data[f"out{k}"] for k in range(count)])
    labels = split.targets
    custom = score_user_metric(metric, outputs, labels, prepared.reference)
    drop = user_metric_drop_interval(
        metric, prepared.baseline_outputs, outputs, labels, prepared.reference
    )
    logger.info("%s on job %s: %.4f", metric.name, result.job_id, custom.value)
    return custom, drop
