"""Every integer column 64 bits wide, as SQLite's always are: sizes, counters, positions, waves.

PostgreSQL's INTEGER is 32 bits: an artifact of 2 GiB and more, or a count past 2**31, failed to
be stored there while SQLite took it. After this revision both stores keep the same numbers. (The
deploy and command sequences, milliseconds since the epoch, were BIGINT from the start.) SQLite
changes a column's type by copying its table, rows and indexes included.

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

# table -> (column, nullable) of every INTEGER column the baseline has.
WIDENED: dict[str, tuple[tuple[str, bool], ...]] = {
    "artifacts": (("size_bytes", False),),
    "artifact_features": (("version", False),),
    "campaign_candidates": (("position", False), ("size_bytes", False)),
    "campaign_jobs": (("position", False), ("attempts", False)),
    "rollouts": (("current_wave", False), ("max_failures", False), ("aborted_wave", True)),
    "rollout_targets": (("wave", False), ("threads", True)),
    "search_measurements": (("trial_number", False),),
    "search_trials": (("trial_number", False),),
}


def _retype(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, nullable in columns:
                batch.alter_column(column, type_=new, existing_type=old, existing_nullable=nullable)


def upgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer())
