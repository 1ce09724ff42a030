"""What a benchmark result says about quality, judged on the host against the campaign's baseline.

The board scores the eval set with shared.scoring, as the host does; this module turns its result
into a select.ResultRow whose drop from the baseline has a *paired* 95% interval (the baseline's
per-sample scores against the board's, on the same samples). With a user metric, the board also
sent the raw outputs of the eval set back: the metric is computed here, on those outputs, with the
function the host used for its own run of the file.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from host.errors import HostError

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


def judge_result(
    result: BenchmarkResult,
    cand: CandidateInfo,
    device: str,
    prepared: Prepared,
    fleet: Fleet,
    *,
    outputs_wait_s: float = OUTPUTS_WAIT_S,
) -> dict[str, Any]:
    """The stored result row of one benchmark (see the module doc); QualityError when the
    result cannot be compared with the baseline."""
    from host.select import ResultRow

    expected = prepared.baseline.name if prepared.baseline is not None else None
    if expected is not None and result.metric != expected:
        raise QualityError(
            f"{device} reported {result.metric or 'no metric'} where the campaign scores "
            f"{expected} ({prepared.task}); update its agent so both sides score alike"
        )
    common = dict(
        candidate=cand.candidate_id,
        device=device,
        recipe=cand.recipe_name,
        format=cand.format,
        precision=cand.precision,
        baseline_metric=prepared.baseline_metric,
    )
    if prepared.user_metric is None:
        row = ResultRow.from_benchmark(
            result, drop_interval=_paired_drop(result, prepared), **common
        )
        return row.to_dict()
    custom, drop = _score_returned_outputs(result, prepared, fleet, outputs_wait_s)
    row = ResultRow.from_benchmark(result, drop_interval=drop, **common)
    row = dataclasses.replace(
        row, metric=custom.name, metric_value=custom.value, metric_interval=custom.interval
    )
    data = row.to_dict()
    data["device_metric"] = result.metric
    data["device_metric_value"] = result.metric_value
    data["device_metric_interval"] = result.metric_interval
    return data


def _paired_drop(result: BenchmarkResult, prepared: Prepared) -> tuple[float, float] | None:
    from shared.scoring import paired_drop_interval

    base = prepared.baseline.per_sample if prepared.baseline is not None else None
    cand = result.sample_scores
    if base is None or cand is None or len(base) != len(cand):
        return None  # from_benchmark falls back to the metric's interval, baseline fixed
    return paired_drop_interval(base, cand)


def _score_returned_outputs(
    result: BenchmarkResult, prepared: Prepared, fleet: Fleet, wait_s: float
) -> tuple[Any, tuple[float, float] | None]:
    import numpy as np

    from host.metrics import score_user_metric, user_metric_drop_interval, user_outputs

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
