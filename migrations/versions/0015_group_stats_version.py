"""group stats version: one integer per group that every write of its runs' figures moves

Revision ID: 0015
Revises: 0014
run_groups.stats_version: bumped by triggers on runs, in the writing transaction, whenever a run
of the group is inserted or deleted, or one of the columns its statistics read (status, figures,
checks, result, seed, attempts, ...) is assigned. service.results.queries keeps each group's
statistics per process under (key, created_at, stats_version), so /groups and the leaderboard read
one row per group by primary key instead of an aggregate over the group's runs (0011's index, then
no longer read, is dropped: it only added work to every write of runs).

Triggers rather than bumps in Python: a figure written by any path (the state machine, the
executor's ORM commits, a Core UPDATE, an operator's SQL) moves the version, so a cache can never
keep figures its group no longer has. PostgreSQL: INSERT and DELETE are statement triggers over
their transition tables (one UPDATE of the group row per statement, not per run); UPDATE is a row
trigger limited to those columns (heartbeats, leases and log offsets never fire it). SQLite: row
triggers. A later migration that rebuilds ``runs`` on SQLite (batch mode's copy-and-move) drops
these triggers and must create them again (tests/results/test_group_summaries checks both
backends).

Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What a group's statistics read from its runs (service.results.queries.seed_row/checks_of and
# service.results.groups.aggregate), and group_key itself (a run moved between groups).
STATS_COLUMNS = (
    "group_key", "status", "status_reason", "seed", "attempts", "finished_at", "val_bpb", "val_loss", "pre_ttt_bpb",
    "artifact_bytes", "code_bytes", "model_bytes", "train_seconds", "eval_seconds", "steps", "checks", "result",
    "track", "hardware", "allow_noncompliant", "node_hardware", "kind",
)
BUMP = "UPDATE run_groups SET stats_version = stats_version + 1"
FIGURES_INDEX = ["group_key", "status", "id", "attempts", "finished_at", "val_bpb", "artifact_bytes"]


def _postgresql() -> list[str]:
    cols = ", ".join(STATS_COLUMNS)
    return [
        f"""CREATE FUNCTION run_groups_bump_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {BUMP} WHERE key IN (SELECT DISTINCT group_key FROM added); RETURN NULL; END $$""",
        f"""CREATE FUNCTION run_groups_bump_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {BUMP} WHERE key IN (SELECT DISTINCT group_key FROM removed); RETURN NULL; END $$""",
        f"""CREATE FUNCTION run_groups_bump_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {BUMP} WHERE key = OLD.group_key OR key = NEW.group_key; RETURN NULL; END $$""",
        "CREATE TRIGGER tr_runs_stats_insert AFTER INSERT ON runs REFERENCING NEW TABLE AS added "
        "FOR EACH STATEMENT EXECUTE FUNCTION run_groups_bump_added()",
        "CREATE TRIGGER tr_runs_stats_delete AFTER DELETE ON runs REFERENCING OLD TABLE AS removed "
        "FOR EACH STATEMENT EXECUTE FUNCTION run_groups_bump_removed()",
        f"CREATE TRIGGER tr_runs_stats_update AFTER UPDATE OF {cols} ON runs "
        "FOR EACH ROW EXECUTE FUNCTION run_groups_bump_changed()",
    ]


def _sqlite() -> list[str]:
    cols = ", ".join(STATS_COLUMNS)
    return [
        f"CREATE TRIGGER tr_runs_stats_insert AFTER INSERT ON runs BEGIN {BUMP} WHERE key = NEW.group_key; END",
        f"CREATE TRIGGER tr_runs_stats_delete AFTER DELETE ON runs BEGIN {BUMP} WHERE key = OLD.group_key; END",
        f"CREATE TRIGGER tr_runs_stats_update AFTER UPDATE OF {cols} ON runs "
        f"BEGIN {BUMP} WHERE key IN (OLD.group_key, NEW.group_key); END",
    ]


def upgrade() -> None:
    with op.batch_alter_table("run_groups") as batch:
        batch.add_column(sa.Column("stats_version", sa.BigInteger(), server_default="0", nullable=False))
    dialect = op.get_bind().dialect.name
    for statement in _postgresql() if dialect == "postgresql" else _sqlite():
        op.execute(statement)
    op.drop_index("ix_runs_group_key_figures", table_name="runs")


def downgrade() -> None:
    op.create_index("ix_runs_group_key_figures", "runs", FIGURES_INDEX)
    for name in ("tr_runs_stats_insert", "tr_runs_stats_delete", "tr_runs_stats_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON runs" if op.get_bind().dialect.name == "postgresql" else f"DROP TRIGGER IF EXISTS {name}")
    if op.get_bind().dialect.name == "postgresql":
        for name in ("run_groups_bump_added", "run_groups_bump_removed", "run_groups_bump_changed"):
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    with op.batch_alter_table("run_groups") as batch:
        batch.drop_column("stats_version")
