"""Benchmarking: the runner (agent side) spawns an isolated worker process that loads the model."""
