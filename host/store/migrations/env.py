"""Alembic's environment for the host's database: always run by host.store.migrations with an
open connection (``config.attributes["connection"]``), never from an alembic.ini."""

from __future__ import annotations

from alembic import context

from host.store.migrations import context_options
from host.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata(), **context_options())
with context.begin_transaction():
    context.run_migrations()
