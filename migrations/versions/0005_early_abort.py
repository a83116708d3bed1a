"""early abort: a run's opt-in abort_if_behind rule, and the node time its abort saved

Revision ID: 0005
Revises: 0004
runs.abort_if_behind: {"step": N, "margin": M} or null (no rule; every earlier row).
runs.saved_seconds: node seconds not spent because the run was stopped early
(ABORTED_BEHIND: its expected time minus what it used); null otherwise.

Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("abort_if_behind", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("saved_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("saved_seconds")
        batch.drop_column("abort_if_behind")
