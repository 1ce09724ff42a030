"""A search read back from the database: per device the trials (measured, reused, predicted and
skipped, with why), the front, the choice, the layers' sensitivity and the predictor's error --
as the document ``edgetailor search --json`` prints, and as an HTML page beside the named recipes
of a campaign on the same model."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.errors import ConfigError
from host.search.store import (
    DECISION_MEASURED,
    DECISION_REUSED,
    MEASURED,
    MeasurementInfo,
    SearchStore,
)
from host.select import Objective, ResultRow, pareto_front, select
from shared.fsutil import atomic_write

if TYPE_CHECKING:
    from host.store import Store

logger = logging.getLogger(__name__)


def measured_pairs(
    sstore: SearchStore, measurements: list[MeasurementInfo]
) -> list[tuple[MeasurementInfo, ResultRow]]:
    """The measured ones of ``measurements``, each with its result row: the agent's
    BenchmarkResult stored with its command, as the host judged it (as a campaign's rows are
    built). One whose stored result cannot be read is left out, with a warning."""
    import msgspec

    from host.campaign.quality import Judgement, result_row
    from host.commands.repository import CommandStore
    from shared.results import BenchmarkResult

    done = [m for m in measurements if m.state == MEASURED and m.fleet_job_id and m.judgement]
    commands = CommandStore(sstore.store).many(m.fleet_job_id or "" for m in done)
    out = []
    for m in done:
        stored = commands.get(m.fleet_job_id or "")
        result = stored.result_as(BenchmarkResult) if stored is not None else None
        if result is None:
            logger.warning("%s on %s: its stored result cannot be read", m.variant, m.device_id)
            continue
        judgement = msgspec.json.decode(m.judgement or "", type=Judgement)
        label = m.candidate or m.variant
        row = result_row(
            result, judgement, candidate=label, artifact=label, device=m.device_id,
            recipe=m.recipe_name or "", format=m.format or result.backend,
            precision=m.precision or "",
        )  # fmt: skip
        out.append((m, row))
    return out


def measured_rows(
    sstore: SearchStore, search_id: str, device: str | None = None
) -> list[ResultRow]:
    """The search's measured variants (on ``device``) as result rows (see measured_pairs)."""
    return [row for _m, row in measured_pairs(sstore, sstore.measurements(search_id, device))]


def search_outcome(store: Store, search_id: str) -> dict[str, Any]:
    """The stored search as a JSON-ready document (see the module doc)."""
    from host.report.page import json_safe

    sstore = SearchStore(store)
    info = sstore.get_search(search_id)
    if info is None:
        known = ", ".join(s.search_id for s in sstore.list_searches()[-5:]) or "none"
        raise ConfigError(f"no search {search_id!r} in {store.safe_url()}; recent ones: {known}")
    spec = info.spec
    objective = Objective.parse(spec.get("objective"))
    devices = list(spec.get("devices") or [])
    selection = select(
        measured_rows(sstore, search_id), spec.get("constraints") or [], objective,
        devices=devices, strict=bool(spec.get("strict")),
    )  # fmt: skip
    per_device: dict[str, Any] = {}
    for device in devices:
        trials = sstore.trials(search_id, device)
        measurements = sstore.measurements(search_id, device)
        by_variant = {m.variant: row for m, row in measured_pairs(sstore, measurements)}
        rows = list(by_variant.values())
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.decision] = counts.get(t.decision, 0) + 1
        pairs = []  # measured against predicted, where both exist
        for t in trials:
            if t.decision not in (DECISION_MEASURED, DECISION_REUSED) or not t.prediction:
                continue
            if not t.prediction.get("known"):
                continue
            measured = by_variant.get(t.variant or "")
            if measured is None:
                continue
            actual = measured.latency_ms.get("p90")
            predicted = t.prediction.get("latency_p90_ms")
            if actual and predicted:
                pairs.append({"trial": t.trial_number, "predicted_p90_ms": predicted,
                              "interval": t.prediction.get("latency_interval"),
                              "measured_p90_ms": actual,
                              "rel_error": abs(predicted - actual) / actual})  # fmt: skip
        chosen = selection.get(device)
        per_device[device] = {
            "board_measurements": len(measurements),
            "budget": spec.get("budget"),
            "decisions": counts,
            "trials": [
                {
                    "trial": t.trial_number, "params": t.params, "recipe": t.recipe,
                    "variant": t.variant, "decision": t.decision, "reason": t.reason,
                    "host": t.host, "prediction": t.prediction, "worker": t.worker,
                }
                for t in trials
            ],
            "measured": [r.to_dict() for r in rows],
            "front": [r.candidate for r in pareto_front(rows)],
            "measured_vs_predicted": pairs,
            "selection": chosen.to_dict() if chosen is not None else None,
        }  # fmt: skip
    return json_safe(
        {
            "search": {
                "id": search_id, "status": info.status, "spec": spec, "created": info.created,
                "updated": info.updated, "error": info.state.get("error"),
                "seconds": info.state.get("seconds"),
            },
            "baseline": {"metric": info.state.get("metric"), "value": info.state.get("baseline_metric")},
            "sensitivity": info.state.get("sensitivity") or [],
            "predictor": info.state.get("predictor"),
            "devices": per_device,
        }
    )  # fmt: skip


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_search_report(
    store: Store, search_id: str, out_dir: Path | str, campaign_id: str | None = None
) -> Path:
    """``out_dir/index.html`` (and ``search.json``): per device the front with what was measured,
    predicted and skipped, beside the named recipes of ``campaign_id`` when given."""
    from host.report.page import _env
    from host.report.plot import pareto_svg

    outcome = search_outcome(store, search_id)
    named: dict[str, list[ResultRow]] = {}
    if campaign_id is not None:
        from host.campaign import campaign_rows
        from host.store.campaigns import CampaignStore

        for row in campaign_rows(CampaignStore(store), campaign_id):
            named.setdefault(row.device, []).append(row)
    spec = outcome["search"]["spec"]
    objective = Objective.parse(spec.get("objective"))
    devices = []
    sstore = SearchStore(store)
    for device, doc in outcome["devices"].items():
        rows = measured_rows(sstore, search_id, device)
        selection = select(rows, spec.get("constraints") or [], objective, devices=[device])[device]
        trials = []
        for t in doc["trials"]:
            prediction = t.get("prediction") or {}
            host = t.get("host") or {}
            trials.append({
                "trial": t["trial"], "decision": t["decision"], "reason": t["reason"],
                "recipe": " -> ".join(step["technique"] for step in t["recipe"]) or "baseline",
                "params": ", ".join(f"{k}={v}" for k, v in sorted(t["params"].items())),
                "host_metric": _fmt(host.get("metric_value"), 4),
                "predicted": _fmt(prediction.get("latency_p90_ms")) if prediction.get("known") else "unknown class",
                "interval": "–" if not prediction.get("latency_interval") else
                "[" + ", ".join(_fmt(v) for v in prediction["latency_interval"]) + "]",
            })  # fmt: skip
        measured = {m["candidate"]: m for m in doc["measured"]}
        named_rows = [
            {"candidate": r.candidate, "p90": _fmt(r.latency_ms.get("p90")),
             "metric": _fmt(r.metric_value, 4), "status": r.status}
            for r in sorted(named.get(device, []), key=lambda r: r.latency_ms.get("p90", math.inf))
        ]  # fmt: skip
        devices.append({
            "device": device, "selection": selection.reason,
            "chosen": selection.chosen_id, "svg": pareto_svg(device, rows, selection),
            "decisions": doc["decisions"], "used": doc["board_measurements"], "budget": doc["budget"],
            "trials": trials, "pairs": doc["measured_vs_predicted"],
            "measured": [
                {"candidate": c, "p90": _fmt((m.get("latency_ms") or {}).get("p90")),
                 "metric": _fmt(m.get("metric_value"), 4), "recipe": m.get("recipe"),
                 "threads": m.get("threads"), "runtime": m.get("runtime")}
                for c, m in measured.items()
            ],
            "named": named_rows,
        })  # fmt: skip
    sensitivity = [
        {"group": s["group"]["name"], "params": s["group"]["params"],
         "prune": _fmt(s.get("prune_drop"), 3), "int8": _fmt(s.get("int8_drop"), 3),
         "note": s.get("note", "")}
        for s in outcome["sensitivity"]
    ]  # fmt: skip
    page = _env().get_template("search.html.j2").render(
        search=outcome["search"], spec=spec, devices=devices, sensitivity=sensitivity,
        predictor=outcome.get("predictor") or {}, campaign_id=campaign_id, fmt=_fmt,
    )  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    atomic_write(index, page.encode("utf-8"))
    atomic_write(out / "search.json", json.dumps(outcome, indent=2, default=str).encode("utf-8"))
    return index


__all__ = ["measured_pairs", "measured_rows", "search_outcome", "write_search_report"]
