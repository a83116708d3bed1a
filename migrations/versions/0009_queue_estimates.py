"""queue estimates: the latest queue forecast, stored by the control worker for every API replica

Revision ID: 0009
Revises: 0008
queue_estimates: one row per queued run of the latest forecast (position, estimated start,
reason, made_at), replaced as a whole by worker/control/forecast.py; the API reads it
(service/queue/stored.py) instead of computing the forecast per process.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_estimates",
        sa.Column("run_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("estimated_start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("made_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_queue_estimates")),
    )
    op.create_index("ix_queue_estimates_start", "queue_estimates", ["estimated_start_at", "position", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_queue_estimates_start", table_name="queue_estimates")
    op.drop_table("queue_estimates")
