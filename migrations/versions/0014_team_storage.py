"""team storage: the storage quota's running total per team, and the script files each team names

Revision ID: 0014
Revises: 0013
team_storage (team_id, bytes, recounted_at): a team's artifact and stored-log bytes, kept by their
writers (service.billing.storage), so a submit's quota check reads one row instead of the team's
whole history. team_script_files (team_id, sha256): the script files the team's script groups name.
Both are backfilled here with the full recount (service.billing.quotas.team_storage's definition).

Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How an archived log's row is known (service.runs.logs.ARCHIVE_KIND / ARCHIVE_SUFFIX, as of this revision).
LOG_KIND = "log"
LOG_SUFFIX = "/log/stdout.log"


def upgrade() -> None:
    storage = op.create_table(
        "team_storage",
        sa.Column("team_id", sa.Integer(), sa.ForeignKey("teams.id", ondelete="CASCADE", name="fk_team_storage_team_id_teams"), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("recounted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("team_id", name="pk_team_storage"),
    )
    names = op.create_table(
        "team_script_files",
        sa.Column("team_id", sa.Integer(), sa.ForeignKey("teams.id", ondelete="CASCADE", name="fk_team_script_files_team_id_teams"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "sha256", name="pk_team_script_files"),
    )
    conn = op.get_bind()
    artifacts = dict(conn.execute(sa.text("SELECT r.team_id, COALESCE(SUM(a.bytes), 0) FROM artifacts a JOIN runs r ON r.id = a.run_id GROUP BY r.team_id")).all())
    logs = dict(conn.execute(sa.text(
        "SELECT r.team_id, COALESCE(SUM(COALESCE(r.log_truncated_at, r.log_bytes)), 0) FROM runs r WHERE NOT EXISTS "
        "(SELECT 1 FROM artifacts a WHERE a.run_id = r.id AND a.kind = :kind AND a.uri LIKE :suffix) GROUP BY r.team_id"
    ), {"kind": LOG_KIND, "suffix": "%" + LOG_SUFFIX}).all())
    teams = set(conn.execute(sa.text("SELECT id FROM teams")).scalars())
    now = datetime.now(timezone.utc)
    rows = [{"team_id": t, "bytes": int(artifacts.get(t) or 0) + int(logs.get(t) or 0), "recounted_at": now} for t in sorted(teams)]
    if rows:
        op.bulk_insert(storage, rows)
    named: set[tuple[int, str]] = set()
    for team_id, config in conn.execute(sa.text("SELECT team_id, config FROM run_groups WHERE kind = 'script'")):
        if isinstance(config, str):  # JSON comes back as text on SQLite
            config = json.loads(config)
        if team_id in teams and isinstance(config, dict):
            named.add((team_id, str(config.get("script"))))
            named.update((team_id, str(sha)) for sha in (config.get("files") or {}).values())
    if named:
        op.bulk_insert(names, [{"team_id": t, "sha256": sha} for t, sha in sorted(named)])


def downgrade() -> None:
    op.drop_table("team_script_files")
    op.drop_table("team_storage")
