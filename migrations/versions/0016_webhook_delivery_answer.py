"""webhook delivery answer: the host each notification's last try went to and the HTTP status it got

Revision ID: 0016
Revises: 0015
webhook_deliveries.host (the webhook URL's host name at that try; never the path, the endpoint's
secret) and webhook_deliveries.status_code (the HTTP status of the last answer; NULL when no answer
came: refused URL, no connection, time-out). Written by service.webhooks.send at every try and
shown on the team's deliveries page. Older rows keep NULL in both.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_deliveries", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("status_code", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("status_code")
        batch.drop_column("host")
