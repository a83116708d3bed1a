"""the attempt each log chunk and metric belongs to

Revision ID: 0003
Revises: 0002
A run sent back to the queue (preemption, no capacity, a vanished job) keeps
the log and metrics of its earlier attempts: log_chunks and metrics say which
attempt (1, 2, ...) wrote them. Rows written before this revision are attempt 1.

Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("log_chunks") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
    with op.batch_alter_table("metrics") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("attempt")
    with op.batch_alter_table("log_chunks") as batch:
        batch.drop_column("attempt")
