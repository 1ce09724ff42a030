"""Per-device search with board measurements in the loop and a fleet-learned predictor.

``edgetailor search`` looks, per device, for the variant (structured pruning ratio per layer group,
low-rank energy, student width, precision per layer group, threads, runtime) that best meets that
device's constraints, with Optuna (TPE or NSGA-II through ask/tell) on the host's own database.
Cheap first, boards last: each trial is built and scored on the host, its latency and memory on
the device are predicted, and only trials predicted feasible and promising go to the board (every
trial on a board of a class the predictor has not seen). The choice per device rests on board
measurements only.

The package, one job a module: ``spec`` (what a search is), ``layers`` (a model's layer groups),
``sensitivity`` (each group's sensitivity to pruning and int8, measured on the host), ``space``
(trial parameters -> recipe, format, threads), ``predictor/`` (graph features, the gradient-boosting
model, its training data), ``study`` (Optuna on RDBStorage), ``store`` (search tables and the
measurement claims), ``measure`` (the one path to the boards), ``driver/`` (prepare and build on
the host; the loop), ``report`` (the stored search read back, and its HTML page).
"""

from host.search.driver.loop import SearchLoop, run_search
from host.search.report import search_outcome, write_search_report
from host.search.spec import SearchError, SearchSpec, check_search_id, new_search_id

__all__ = [
    "SearchError",
    "SearchLoop",
    "SearchSpec",
    "check_search_id",
    "new_search_id",
    "run_search",
    "search_outcome",
    "write_search_report",
]
