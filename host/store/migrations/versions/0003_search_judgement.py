"""Search measurements store the host's judgement and what the variant is, not the whole row.

A measured search variant kept its whole result row as JSON, so the agent's result was stored twice
(with its command, and inside that row). Like a campaign job, a measurement now keeps the variant's
facts (candidate label, recipe, format, precision) and the host's typed judgement of the result
(``host.campaign.quality.Judgement`` as msgspec JSON); the row is rebuilt from the agent's
``BenchmarkResult`` stored with its command. Rows made before this revision keep their facts and
their judgement's baseline and paired drop interval, read from the old row; a user metric computed
on the host is not in the old row and is measured again if the search asks for that variant.
The downgrade brings the column back empty.

Revision ID: 0003_search_judgement
Revises: 0002_64bit_integers
Create Date: 2026-12-08
"""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003_search_judgement"
down_revision = "0002_64bit_integers"
branch_labels = None
depends_on = None

NEW_COLUMNS = (
    sa.Column("candidate", sa.String(length=256), nullable=True),
    sa.Column("recipe_name", sa.String(length=256), nullable=True),
    sa.Column("format", sa.String(length=16), nullable=True),
    sa.Column("precision", sa.String(length=32), nullable=True),
    sa.Column("judgement", sa.Text(), nullable=True),
)
KEY = ("search_id", "device_id", "variant")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _judgement(row: dict[str, Any]) -> str:
    """The Judgement JSON an old row implies: its baseline and paired drop interval."""
    judgement: dict[str, Any] = {}
    baseline = _finite(row.get("baseline_metric"))
    if baseline is not None:
        judgement["baseline_metric"] = baseline
    interval = row.get("drop_interval")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        bounds = [_finite(v) for v in interval]
        if None not in bounds:
            judgement["drop_interval"] = bounds
    return json.dumps(judgement)


def upgrade() -> None:
    with op.batch_alter_table("search_measurements") as batch:
        for column in NEW_COLUMNS:
            batch.add_column(column.copy())
    table = sa.table(
        "search_measurements",
        *(sa.column(name, sa.String) for name in KEY),
        sa.column("row", sa.JSON),
        *(sa.column(c.name, c.type) for c in NEW_COLUMNS),
    )
    bind = op.get_bind()
    old = bind.execute(
        sa.select(*(table.c[n] for n in KEY), table.c.row).where(table.c.row.is_not(None))
    ).all()
    for search_id, device_id, variant, row in old:
        data = row if isinstance(row, dict) else json.loads(row)
        bind.execute(
            table.update()
            .where(
                table.c.search_id == search_id,
                table.c.device_id == device_id,
                table.c.variant == variant,
            )
            .values(
                candidate=str(data.get("candidate", ""))[:256] or None,
                recipe_name=str(data.get("recipe", ""))[:256] or None,
                format=str(data.get("format", ""))[:16] or None,
                precision=str(data.get("precision", ""))[:32] or None,
                judgement=_judgement(data),
            )
        )
    with op.batch_alter_table("search_measurements") as batch:
        batch.drop_column("row")


def downgrade() -> None:
    with op.batch_alter_table("search_measurements") as batch:
        batch.add_column(sa.Column("row", sa.JSON(), nullable=True))
        for column in reversed(NEW_COLUMNS):
            batch.drop_column(column.name)
