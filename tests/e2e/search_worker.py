"""A search worker as its own process (``python -m tests.e2e.search_worker CONFIG.json``): what a
second ``edgetailor search --resume ID`` or a service replica is, for tests that kill one or run
two at once. CONFIG holds the database and broker URLs, the base topic, the search id, its work
dir and the SearchSpec fields."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from host.fleet import Fleet
    from host.search import SearchSpec, run_search
    from host.store import Store

    torch.set_num_threads(1)
    config = json.loads(Path(argv[0]).read_text())
    spec = SearchSpec.from_dict(config["spec"])
    with (
        Store(config["db"]) as store,
        Fleet(config["broker"], config["base"], store=store) as fleet,
    ):
        fleet.wait_synced()
        outcome = run_search(
            spec, store, fleet, search_id=config["search_id"], work_dir=Path(config["work_dir"]),
            worker=config.get("worker"),
        )  # fmt: skip
    chosen = {d: (doc["selection"] or {}).get("chosen") for d, doc in outcome["devices"].items()}
    print(json.dumps({"chosen": chosen}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
