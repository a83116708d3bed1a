"""the shared trainer's default stack becomes 2026-04-27: stored configs say STACK=2026-03-23

Revision ID: 0019
Revises: 0018
A trainer spec is stored canonical: the knobs that differ from its stack's defaults, and STACK
unless it is the default stack. Until now the default was 2026-03-23, so a stored config without
STACK meant that stack; from now on it means 2026-04-27. Every stored trainer config without STACK
(runs.spec, run_groups.config, sweeps.spec's base) gets STACK=2026-03-23, which is the canonical
form of the same config under the new default, and every group key computed from such a config is
computed again (runs.group_key, run_groups.key, sweep_trials.group_key, and any group key a sweep's
spec names, such as a promotion baseline). Nothing is re-run or re-scored: each run keeps its
figures and stays in its group under the group's new key.

Downgrade removes STACK=2026-03-23 again (a config with STACK=2026-04-27 keeps it, and means the
03-23 stack's defaults plus that preset under the old code: run no such downgrade with them).

Create Date: 2026-12-06
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_DEFAULT = "2026-03-23"


def _key(team_id: int, config: dict, track: str, hardware: str, allow_noncompliant: bool) -> str:
    # A frozen copy of service.runs.spec.group_key_of: a migration must not change when the code does.
    canonical = json.dumps(
        {"allow_noncompliant": allow_noncompliant, "config": config, "hardware": hardware, "team": team_id, "track": track},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )  # fmt: skip
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _load(value: Any) -> Any:  # JSON comes back as text on SQLite
    return json.loads(value) if isinstance(value, str) else value


def _with_stack(config: dict, upgrade: bool) -> dict | None:
    """The config under the new default (upgrade) or the old one; None when it does not change."""
    if upgrade and "STACK" not in config:
        return dict(sorted({**config, "STACK": OLD_DEFAULT}.items()))
    if not upgrade and config.get("STACK") == OLD_DEFAULT:
        return {k: v for k, v in config.items() if k != "STACK"}
    return None


def _rename_keys(value: Any, renamed: dict[str, str]) -> Any:
    if isinstance(value, str):
        return renamed.get(value, value)
    if isinstance(value, list):
        return [_rename_keys(v, renamed) for v in value]
    if isinstance(value, dict):
        return {k: _rename_keys(v, renamed) for k, v in value.items()}
    return value


def _migrate(upgrade: bool) -> None:
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("team_id", sa.Integer), sa.column("kind", sa.String),
                    sa.column("spec", sa.JSON), sa.column("track", sa.String), sa.column("hardware", sa.String),
                    sa.column("allow_noncompliant", sa.Boolean), sa.column("group_key", sa.String))  # fmt: skip
    groups = sa.table("run_groups", sa.column("key", sa.String), sa.column("team_id", sa.Integer), sa.column("kind", sa.String),
                      sa.column("config", sa.JSON), sa.column("track", sa.String), sa.column("hardware", sa.String),
                      sa.column("allow_noncompliant", sa.Boolean))  # fmt: skip
    sweeps = sa.table("sweeps", sa.column("id", sa.Integer), sa.column("spec", sa.JSON))
    trials = sa.table("sweep_trials", sa.column("id", sa.Integer), sa.column("group_key", sa.String))

    renamed: dict[str, str] = {}
    for g in conn.execute(sa.select(groups).where(groups.c.kind == "trainer")).all():
        config = _with_stack(_load(g.config) or {}, upgrade)
        if config is None:
            continue
        key = _key(g.team_id, config, g.track, g.hardware, bool(g.allow_noncompliant))
        renamed[g.key] = key
        conn.execute(sa.update(groups).where(groups.c.key == g.key).values(key=key, config=config))
    for r in conn.execute(sa.select(runs).where(runs.c.kind == "trainer")).all():
        spec = _with_stack(_load(r.spec) or {}, upgrade)
        if spec is None:
            continue
        key = _key(r.team_id, spec, r.track, r.hardware, bool(r.allow_noncompliant))
        renamed.setdefault(r.group_key, key)
        conn.execute(sa.update(runs).where(runs.c.id == r.id).values(spec=spec, group_key=key))
    for t in conn.execute(sa.select(trials).where(trials.c.group_key.in_(list(renamed)))).all() if renamed else ():
        conn.execute(sa.update(trials).where(trials.c.id == t.id).values(group_key=renamed[t.group_key]))
    for s in conn.execute(sa.select(sweeps)).all():
        spec = _rename_keys(_load(s.spec) or {}, renamed)
        base = _with_stack(spec.get("base") or {}, upgrade)
        if base is not None:
            spec["base"] = base
        conn.execute(sa.update(sweeps).where(sweeps.c.id == s.id).values(spec=spec))


def upgrade() -> None:
    _migrate(upgrade=True)


def downgrade() -> None:
    _migrate(upgrade=False)
