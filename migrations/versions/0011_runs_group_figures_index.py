"""runs by group with what a group's figures depend on: the lists' and leaderboard's fingerprint

Revision ID: 0011
Revises: 0010
ix_runs_group_key_figures on runs (group_key, status, id, attempts, finished_at, val_bpb,
artifact_bytes): service.results.queries reads a group's fingerprint (count per status, newest id
and end, attempts, sums of figures) to know whether its cached statistics still hold. Without it
that aggregate read every row of a 10,000-run group from the heap (a seq scan of the wide runs
table, 15 ms on every /groups and leaderboard request of every team); with it, an index-only scan.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ["group_key", "status", "id", "attempts", "finished_at", "val_bpb", "artifact_bytes"]


def upgrade() -> None:
    op.create_index("ix_runs_group_key_figures", "runs", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_runs_group_key_figures", table_name="runs")
