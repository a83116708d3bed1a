"""team webhooks: a notification URL per team and the deliveries waiting to be sent

Revision ID: 0012
Revises: 0011
teams.webhook_url (nullable): where the team's notifications go. webhook_deliveries: one row per
notification (run, group or sweep event), written with the event, sent by the control worker's
webhook tick with retries (service.webhooks).

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("teams", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("team_id", sa.Integer(), sa.ForeignKey("teams.id", ondelete="CASCADE", name="fk_webhook_deliveries_team_id_teams"), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("dedupe_key", name="uq_webhook_deliveries_dedupe_key"),
    )
    op.create_index("ix_webhook_deliveries_team_id", "webhook_deliveries", ["team_id"])
    op.create_index("ix_webhook_deliveries_status_due", "webhook_deliveries", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    # Not batch mode: on SQLite that rebuilds teams (DROP TABLE), which every table's foreign keys refuse
    # once rows point at a team. SQLite >= 3.35 and PostgreSQL drop a column in place.
    op.execute("ALTER TABLE teams DROP COLUMN webhook_url")
