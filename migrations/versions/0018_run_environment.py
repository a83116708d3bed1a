"""run environment: what the Python a run's job ran on held

Revision ID: 0018
Revises: 0017
runs.environment: the latest attempt's Python environment as its launcher read it from inside
(service.runs.scripts.environment's report: python, torch, cuda, flash_attn, every package and its
version; a declared environment's hash and declaration too); null: not collected yet, or before this.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("environment", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("environment")
