"""Baseline: the host's tables as they were before migrations existed.

A fresh database never runs this (it is created from the models and stamped), a database made
before migrations (created by ``create_all`` and widened by adding nullable columns) is adopted by
it: every table it lacks is created, every column and index a table lacks is added (only nullable
columns can be: existing rows read them as unset), and every row is kept. The schema below is a
frozen copy, never the live models: later revisions change it.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-08
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from host.store.migrations import MigrationError

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)


def _schema() -> sa.MetaData:
    schema = sa.MetaData()
    sa.Table(
        "api_tokens",
        schema,
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("revoked", sa.Float(), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("token_id"),
        sa.UniqueConstraint("sha256"),
    )
    sa.Table(
        "artifact_features",
        schema,
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    sa.Table(
        "artifacts",
        schema,
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("precision", sa.String(length=32), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    sa.Table(
        "campaign_candidates",
        schema,
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("recipe_name", sa.String(length=128), nullable=False),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("precision", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("host_metrics", sa.JSON(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "candidate_id"),
    )
    sa.Table(
        "campaign_jobs",
        schema,
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("fleet_job_id", sa.String(length=64), nullable=True),
        sa.Column("job_ids", sa.JSON(), nullable=False),
        sa.Column("judgement", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "candidate_id", "device_id"),
    )
    sa.Table(
        "campaigns",
        schema,
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id"),
    )
    sa.Table(
        "command_sequences",
        schema,
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    sa.Table(
        "commands",
        schema,
        sa.Column("command_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("eval_sha256", sa.String(length=64), nullable=True),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("published_at", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("response_msg_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("finished", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("command_id"),
        sa.UniqueConstraint("response_msg_id"),
        sa.Index("ix_commands_device_state", "device_id", "state"),
        sa.Index("ix_commands_job_id", "job_id"),
        sa.Index("ix_commands_state", "state"),
    )
    sa.Table(
        "deploy_sequences",
        schema,
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    sa.Table(
        "device_artifacts",
        schema,
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "sha256"),
    )
    sa.Table(
        "devices",
        schema,
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("birth", sa.JSON(), nullable=True),
        sa.Column("telemetry", sa.JSON(), nullable=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("last_telemetry_at", sa.Float(), nullable=True),
        sa.Column("device_key", sa.String(length=64), nullable=True),
        sa.Column("device_key_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("device_id"),
    )
    sa.Table(
        "rollout_targets",
        schema,
        sa.Column("deploy_id", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("artifact_path", sa.Text(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("eval_path", sa.Text(), nullable=True),
        sa.Column("latency_budget_ms", sa.Float(), nullable=True),
        sa.Column("min_metric", sa.Float(), nullable=True),
        sa.Column("runtime", sa.String(length=128), nullable=True),
        sa.Column("threads", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("command_msg_id", sa.String(length=64), nullable=True),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claim_until", sa.Float(), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("active_sha256", sa.String(length=64), nullable=True),
        sa.Column("previous_sha256", sa.String(length=64), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("health", sa.JSON(), nullable=True),
        sa.Column("rollback_state", sa.String(length=16), nullable=True),
        sa.Column("rollback_msg_id", sa.String(length=64), nullable=True),
        sa.Column("rollback_reason", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("deploy_id"),
        sa.Index("ix_rollout_targets_device_id", "device_id"),
        sa.Index("ix_rollout_targets_rollout_id", "rollout_id"),
        sa.Index("ix_rollout_targets_state", "state"),
    )
    sa.Table(
        "rollouts",
        schema,
        sa.Column("rollout_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("wave_started", sa.Float(), nullable=False),
        sa.Column("max_failures", sa.Integer(), nullable=False),
        sa.Column("aborted_wave", sa.Integer(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id"),
        sa.Index("ix_rollouts_open", "open"),
        sa.Index("ix_rollouts_status", "status"),
    )
    sa.Table(
        "search_measurements",
        schema,
        sa.Column("search_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("claim_until", sa.Float(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("fleet_job_id", sa.String(length=64), nullable=True),
        sa.Column("row", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("search_id", "device_id", "variant"),
    )
    sa.Table(
        "search_trials",
        schema,
        sa.Column("search_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("host", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("search_id", "device_id", "trial_number"),
    )
    sa.Table(
        "searches",
        schema,
        sa.Column("search_id", sa.String(length=64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("search_id"),
    )
    sa.Table(
        "service_jobs",
        schema,
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claim_until", sa.Float(), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
        sa.Index("ix_service_jobs_state", "state"),
    )
    sa.Table(
        "store_identity",
        schema,
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    return schema


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in _schema().sorted_tables:
        if not inspector.has_table(table.name):
            table.create(bind)
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if column.primary_key or not column.nullable:
                raise MigrationError(
                    f"the database has a table {table.name} without the column {column.name}, "
                    "which this version needs and cannot add to existing rows; point --db at a "
                    "new database"
                )
            op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
            logger.info("database adopted: added column %s.%s", table.name, column.name)
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)


def downgrade() -> None:
    for table in reversed(_schema().sorted_tables):
        op.drop_table(table.name)
