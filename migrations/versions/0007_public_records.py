"""public records: the challenge's record folders, imported by `caddie records import`

Revision ID: 0007
Revises: 0006
One row per record folder (track, folder) with its per-seed figures as JSON and caddie's
verdict over its logs; the leaderboard shows them beside team groups, and a group's
default baseline is its track's best public record.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "public_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("track", sa.String(32), nullable=False),
        sa.Column("folder", sa.String(200), nullable=False),
        sa.Column("date", sa.String(10), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("val_bpb", sa.Float(), nullable=True),
        sa.Column("hardware", sa.String(100), nullable=True),
        sa.Column("pytorch_version", sa.String(50), nullable=True),
        sa.Column("code_sha256", sa.String(64), nullable=True),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("track", "folder", name="uq_public_records_track_folder"),
    )


def downgrade() -> None:
    op.drop_table("public_records")
