"""web session expiry: api_tokens.expires_at

Revision ID: 0017
Revises: 0016
api_tokens.expires_at (indexed): set on the token behind each web sign-in (now +
CADDIE_WEB_SESSION_DAYS); such a token signs in no more once past it, and the janitor deletes the
expired and revoked ones. Null: an API token, which never expires. The session tokens made before
this revision (named "web session of #<id>", service.teams.tokens.web_session_name) get their
creation time + 14 days (the cookie's lifetime then), so those piled up so far are pruned too.

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_LIFETIME = timedelta(days=14)  # service.web.session.MAX_AGE_S before this revision
SESSION_NAME = "web session of #%"


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_api_tokens_expires_at", ["expires_at"])
    conn = op.get_bind()
    tokens = sa.table("api_tokens", sa.column("id", sa.Integer()), sa.column("name", sa.String()),
                      sa.column("created_at", sa.DateTime(timezone=True)), sa.column("expires_at", sa.DateTime(timezone=True)))
    rows = conn.execute(sa.select(tokens.c.id, tokens.c.created_at).where(tokens.c.name.like(SESSION_NAME))).all()
    for token_id, created in rows:
        conn.execute(sa.update(tokens).where(tokens.c.id == token_id).values(expires_at=created + OLD_LIFETIME))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_expires_at")
        batch.drop_column("expires_at")
