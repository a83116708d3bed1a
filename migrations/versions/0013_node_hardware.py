"""node hardware: what a run's node reported at launch

Revision ID: 0013
Revises: 0012
runs.node_hardware: the latest attempt's node as the worker recorded it at launch (GPU model,
count, who reported it, as a hardware string); null: not launched yet, or launched before this.
The rules judge hardware from it and billing bills it, where it differs from the spec's.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("node_hardware", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("node_hardware")
