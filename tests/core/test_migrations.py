"""Alembic: upgrade, downgrade, upgrade again on both backends, and the
migrated schema equals the models (autogenerate finds nothing to do); the
data migrations move existing rows as they should."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.core.migrate import downgrade, upgrade
from service.core.models import Base
from service.runs.spec import group_key_of
from tests.fresh_db import empty_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it (PostgreSQL: a fresh one, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with empty_database() as url:
        yield url


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    every_table = set(Base.metadata.tables)
    upgrade(empty_url)
    assert _tables(empty_url) == every_table
    assert _diff(empty_url) == []
    downgrade(empty_url, "base")
    assert _tables(empty_url) == set()
    upgrade(empty_url)
    assert _tables(empty_url) == every_table
    assert _diff(empty_url) == []


# --- 0002: group keys include the team ----------------------------------------------------------
def _old_key(config: dict, track: str, hardware: str) -> str:
    """The group key as 0001's code made it: config, track and hardware; no team."""
    canonical = json.dumps({"config": config, "hardware": hardware, "track": track}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def test_0002_recomputes_group_keys_per_team_and_0001_restores_them(empty_url: str) -> None:
    upgrade(empty_url, "0001")
    engine = create_engine(empty_url)
    now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    shared, other = {"NUM_LAYERS": 9, "MATRIX_LR": 0.02}, {"XSA_LAST_N": 11}
    # (team, name, config, track, hardware, seed): team 1 and team 2 ran the same config.
    runs = [
        (1, "nine", shared, "10min_16mb", "H100:8", 1), (1, "nine again", shared, "10min_16mb", "H100:8", 2),
        (2, "theirs", shared, "10min_16mb", "H100:8", 1), (1, "xsa", other, "10min_16mb", "H100:8", 1),
        (1, "xsa small", other, "10min_16mb", "H100:1", 1), (2, "default", {}, "unlimited", "cpu", 7),
    ]
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO teams (id, name, weight, created_at) VALUES (1, 'team-a', 1, :t), (2, 'team-b', 1, :t)"), {"t": now})
            conn.execute(text("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'alice', false, :t)"), {"t": now})
            for i, (team, name, config, track, hardware, seed) in enumerate(runs, start=1):
                conn.execute(text(
                    "INSERT INTO runs (id, team_id, user_id, name, notes, spec, seed, group_key, track, hardware, priority, status,"
                    " status_reason, attempts, submitted_at, log_bytes)"
                    " VALUES (:id, :team, 1, :name, '', :spec, :seed, :key, :track, :hw, 0, 'SUCCEEDED', '', 1, :t, 0)"
                ), {"id": i, "team": team, "name": name, "spec": json.dumps(config), "seed": seed,
                    "key": _old_key(config, track, hardware), "track": track, "hw": hardware, "t": now + timedelta(minutes=i)})
        old = _keys(engine)
        assert old[1] == old[2] == old[3]  # before: the two teams shared one group

        upgrade(empty_url, "head")
        new = _keys(engine)
        for i, (team, _, config, track, hardware, _) in enumerate(runs, start=1):
            assert new[i] == group_key_of(team, config, track, hardware, False)
        assert new[1] == new[2] != new[3]  # one team's seeds share a key; the other team's run has its own
        assert len(set(new.values())) == 5
        with engine.connect() as conn:
            groups = conn.execute(text("SELECT key, team_id, name, track, hardware, config, allow_noncompliant, published_at FROM run_groups")).all()
        by_key = {g.key: g for g in groups}
        assert len(groups) == 5 and set(by_key) == set(new.values())
        first = by_key[new[1]]
        assert (first.team_id, first.name, first.track, first.hardware) == (1, "nine", "10min_16mb", "H100:8")  # named by the first run
        assert _json(first.config) == shared and not first.allow_noncompliant and first.published_at is None
        assert (by_key[new[3]].team_id, by_key[new[3]].name) == (2, "theirs")
        with engine.connect() as conn:
            flags = conn.execute(text("SELECT allow_noncompliant, checks, checks_verdict FROM runs")).all()
        assert all(not f.allow_noncompliant and f.checks is None and f.checks_verdict is None for f in flags)

        downgrade(empty_url, "0001")
        assert _keys(engine) == old
        assert "run_groups" not in _tables(empty_url)
        upgrade(empty_url, "head")  # and up again: the same keys as the first time
        assert _keys(engine) == new
    finally:
        engine.dispose()


def _keys(engine) -> dict[int, str]:  # noqa: ANN001
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, group_key FROM runs ORDER BY id")).all())


def _json(value):  # noqa: ANN001, ANN202 - JSON comes back as text on SQLite
    return json.loads(value) if isinstance(value, str) else value
