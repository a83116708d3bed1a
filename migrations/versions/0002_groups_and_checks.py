"""groups of runs, rule checks per run

Revision ID: 0002
Revises: 0001
Adds run_groups (one team's runs of one config on one track and hardware, with
publication), and on runs: allow_noncompliant, checks, checks_verdict.

A group key now includes the team (and the opt-out flag): keys of existing runs
are recomputed, and a group row is made for each.

Create Date: 2026-11-24
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(team_id: int, config: dict, track: str, hardware: str, allow_noncompliant: bool) -> str:
    # A frozen copy of service.runs.group_key_of: a migration must not change
    # when the application code does.
    canonical = json.dumps(
        {"allow_noncompliant": allow_noncompliant, "config": config, "hardware": hardware, "team": team_id, "track": track},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _old_key(config: dict, track: str, hardware: str) -> str:
    canonical = json.dumps({"config": config, "hardware": hardware, "track": track}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _load(value):  # noqa: ANN001, ANN202 - JSON comes back as text on SQLite
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    op.create_table(
        "run_groups",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("track", sa.String(length=32), nullable=False),
        sa.Column("hardware", sa.String(length=32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("allow_noncompliant", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_run_groups_team_id_teams"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["published_by"], ["users.id"], name=op.f("fk_run_groups_published_by_users"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_run_groups")),
    )
    op.create_index("ix_run_groups_track_hardware", "run_groups", ["track", "hardware"], unique=False)
    op.create_index(op.f("ix_run_groups_team_id"), "run_groups", ["team_id"], unique=False)
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("allow_noncompliant", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("checks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("checks_verdict", sa.String(length=16), nullable=True))

    conn = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("team_id", sa.Integer), sa.column("name", sa.String),
                    sa.column("spec", sa.JSON), sa.column("track", sa.String), sa.column("hardware", sa.String),
                    sa.column("group_key", sa.String), sa.column("submitted_at", sa.DateTime))
    groups = sa.table("run_groups", sa.column("key", sa.String), sa.column("team_id", sa.Integer), sa.column("name", sa.String),
                      sa.column("track", sa.String), sa.column("hardware", sa.String), sa.column("config", sa.JSON),
                      sa.column("allow_noncompliant", sa.Boolean), sa.column("created_at", sa.DateTime))
    seen: set[str] = set()
    rows = conn.execute(sa.select(runs.c.id, runs.c.team_id, runs.c.name, runs.c.spec, runs.c.track, runs.c.hardware,
                                  runs.c.submitted_at).order_by(runs.c.id)).all()
    for row in rows:
        config = _load(row.spec) or {}
        key = _key(row.team_id, config, row.track, row.hardware, False)
        conn.execute(sa.update(runs).where(runs.c.id == row.id).values(group_key=key))
        if key not in seen:
            seen.add(key)
            created = row.submitted_at or datetime.now(timezone.utc)
            if conn.dialect.name == "sqlite" and created.tzinfo is not None:
                created = created.astimezone(timezone.utc).replace(tzinfo=None)
            conn.execute(sa.insert(groups).values(key=key, team_id=row.team_id, name=row.name, track=row.track,
                                                  hardware=row.hardware, config=config, allow_noncompliant=False, created_at=created))


def downgrade() -> None:
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("spec", sa.JSON), sa.column("track", sa.String),
                    sa.column("hardware", sa.String), sa.column("group_key", sa.String))
    for row in conn.execute(sa.select(runs.c.id, runs.c.spec, runs.c.track, runs.c.hardware)).all():
        key = _old_key(_load(row.spec) or {}, row.track, row.hardware)
        conn.execute(sa.update(runs).where(runs.c.id == row.id).values(group_key=key))
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("checks_verdict")
        batch.drop_column("checks")
        batch.drop_column("allow_noncompliant")
    op.drop_index(op.f("ix_run_groups_team_id"), table_name="run_groups")
    op.drop_index("ix_run_groups_track_hardware", table_name="run_groups")
    op.drop_table("run_groups")
