"""log cap: where a run's stored log stops (CADDIE_LOG_MAX_BYTES)

Revision ID: 0008
Revises: 0007
runs.log_truncated_at: null while the whole log is stored; else the byte offset where storing
stopped, because the log passed CADDIE_LOG_MAX_BYTES. The worker reads and parses the rest
(metrics, final figures) without storing it; runs.log_bytes stays the size of the job's log.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("log_truncated_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("log_truncated_at")
