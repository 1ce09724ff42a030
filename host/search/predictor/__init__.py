"""The fleet-learned latency and memory predictor: ``features`` (from the exported graph and the
board's class), ``model`` (quantile gradient boosting, error per board class), ``data`` (every
stored result as training rows)."""
