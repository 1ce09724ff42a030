"""Every module that defines tables of the host's database, in one registry.

The tables live on one ``host.store.models.Base``; a table exists in a database only once its
module was imported. Opening a store imports every module named here, so the schema the migrations
build, the one they are compared with and the one a fresh database gets are always the whole
schema, whichever features the running command touched. A module that defines a table and is not
named here is a test failure (tests/host/test_migrations.py scans host/ for them).
"""

from __future__ import annotations

import importlib

from sqlalchemy import MetaData

from host.store.models import Base

# Modules whose classes derive from Base. Add a new one here, then make a revision:
# ``python -m host.store.migrations revision -m "what changed"`` (docs/stores.md).
MODEL_MODULES: tuple[str, ...] = (
    "host.store.models",  # devices, artifacts
    "host.commands.models",  # commands, command_sequences, store_identity
    "host.store.campaigns",  # campaigns, campaign_candidates, campaign_jobs, device_artifacts
    "host.store.deployments",  # deploy_sequences, rollouts, rollout_targets
    "host.store.service",  # api_tokens, service_jobs
    "host.search.store",  # searches, search_trials, search_measurements, artifact_features
)


def metadata() -> MetaData:
    """The host's whole schema: every registered model module imported, then ``Base.metadata``."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return Base.metadata
