"""runs: an index on (status, hardware), so a scheduler tick learns which hardware the queue asks for in
a few index probes

Revision ID: 0021
Revises: 0020
A tick first asks whether any hardware that a queued run wants has a free slot. SELECT DISTINCT
hardware over the queued runs read every one of them (32 ms in PostgreSQL at 50,000 queued, each tick
with every slot busy); with this index a skip scan (one probe per distinct hardware) takes 0.3 ms.

Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_runs_status_hardware", "runs", ["status", "hardware"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_hardware", table_name="runs")
