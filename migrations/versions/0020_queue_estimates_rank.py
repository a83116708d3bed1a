"""queue estimates: each run's rank in GET /queue's order and its team, indexed for keyset pages

Revision ID: 0020
Revises: 0019
GET /queue read every queued run, joined and sorted, for one page (~0.46 s in PostgreSQL at
50,000 queued). The control worker now stores each run's rank (start, position, id; 1 first)
and team, and a page is ``limit`` rows of ix_queue_estimates_rank (a member's: of
ix_queue_estimates_team_id_rank) after a cursor. The old start-order index is no longer read.
Stored rows are dropped: they have no rank, and the worker writes a new forecast within
queue_forecast_interval_s.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM queue_estimates")
    op.drop_index("ix_queue_estimates_start", table_name="queue_estimates")
    with op.batch_alter_table("queue_estimates") as batch:
        batch.add_column(sa.Column("rank", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("team_id", sa.Integer(), nullable=True))
    op.create_index("ix_queue_estimates_rank", "queue_estimates", ["rank"])
    op.create_index("ix_queue_estimates_team_id_rank", "queue_estimates", ["team_id", "rank"])


def downgrade() -> None:
    op.drop_index("ix_queue_estimates_team_id_rank", table_name="queue_estimates")
    op.drop_index("ix_queue_estimates_rank", table_name="queue_estimates")
    with op.batch_alter_table("queue_estimates") as batch:
        batch.drop_column("team_id")
        batch.drop_column("rank")
    op.create_index("ix_queue_estimates_start", "queue_estimates", ["estimated_start_at", "position", "run_id"])
