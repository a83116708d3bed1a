"""warm start: whether a run's latest attempt ran on a reused (kept-warm) cluster

Revision ID: 0006
Revises: 0005
runs.warm_start: True when the latest attempt that reached RUNNING got a cluster
kept warm by an earlier run, False when its cluster was freshly provisioned (or the
launcher has no warm pool), null when no attempt has run yet (every earlier row).
Written by the executor in the commit that moves the run to RUNNING; the
accounting counts warm starts and the provisioning they saved (service.accounting).

Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("warm_start", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("warm_start")
