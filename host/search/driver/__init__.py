"""The search's driver: ``prepare`` (baseline, eval set, sensitivity, the plan builder) and
``loop`` (cheap first, boards last)."""
