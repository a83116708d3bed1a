"""script runs: a run (and its group) is of the shared trainer or of a team's own train_gpt.py

Revision ID: 0004
Revises: 0003
runs.kind and run_groups.kind say which ("trainer" for every earlier row);
script_files holds the uploaded scripts and their files, once per sha256.

Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "script_files",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_script_files")),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), server_default="trainer", nullable=False))
    with op.batch_alter_table("run_groups") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), server_default="trainer", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("run_groups") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("kind")
    op.drop_table("script_files")
