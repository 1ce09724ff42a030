"""Every integer column 64 bits wide, as SQLite's always are: sizes, counters, positions, waves.

PostgreSQL's INTEGER is 32 bits: an artifact of 2 GiB and more, or a count past 2**31, failed to
be stored there while SQLite took it; so did every deploy (its sequence is milliseconds since the
epoch, about 1.8e12) in a database made before the deploy sequences became BIGINT. After this
revision both stores keep the same numbers. Only columns still narrower than BIGINT are changed;
SQLite changes a column's type by copying its table, rows and indexes included.

Revision ID: 0002_64bit_integers
Revises: 0001_baseline
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_64bit_integers"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

# table -> (column, nullable) of every integer column of the baseline (the sequences were INTEGER
# in databases made before the command pipeline).
WIDENED: dict[str, tuple[tuple[str, bool], ...]] = {
    "artifacts": (("size_bytes", False),),
    "deploy_sequences": (("sequence", False),),
    "artifact_features": (("version", False),),
    "campaign_candidates": (("position", False), ("size_bytes", False)),
    "campaign_jobs": (("position", False), ("attempts", False)),
    "rollouts": (("current_wave", False), ("max_failures", False), ("aborted_wave", True)),
    "rollout_targets": (("wave", False), ("threads", True), ("sequence", True)),
    "search_measurements": (("trial_number", False),),
    "search_trials": (("trial_number", False),),
}


# The baseline's BIGINT columns: a downgrade leaves them so.
BIGINT_IN_BASELINE = {("deploy_sequences", "sequence"), ("rollout_targets", "sequence")}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in WIDENED.items():
        types = {column["name"]: column["type"] for column in inspector.get_columns(table)}
        narrow = [(name, nullable) for name, nullable in columns
                  if not isinstance(types[name], sa.BigInteger)]  # fmt: skip
        if narrow:
            with op.batch_alter_table(table) as batch:
                for name, nullable in narrow:
                    batch.alter_column(name, type_=sa.BigInteger(), existing_type=sa.Integer(),
                                       existing_nullable=nullable)  # fmt: skip


def downgrade() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for name, nullable in columns:
                if (table, name) not in BIGINT_IN_BASELINE:
                    batch.alter_column(name, type_=sa.Integer(), existing_type=sa.BigInteger(),
                                       existing_nullable=nullable)  # fmt: skip
