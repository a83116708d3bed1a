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

        upgrade(empty_url, "0002")
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
        upgrade(empty_url, "0002")  # and up again: the same keys as the first time
        assert _keys(engine) == new
    finally:
        engine.dispose()


# --- 0019: the default stack becomes 2026-04-27 --------------------------------------------------------
def test_0019_keeps_stored_configs_on_the_2026_03_23_stack_under_new_keys(empty_url: str) -> None:
    upgrade(empty_url, "0018")
    engine = create_engine(empty_url)
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    # (config as stored before: knobs off the 2026-03-23 defaults, STACK only when not that stack; kind)
    runs = [({"NUM_LAYERS": 9}, "trainer"), ({"NUM_LAYERS": 9}, "trainer"), ({"STACK": "2026-04-27"}, "trainer"),
            ({"script": "abc", "data": "sp1024"}, "script")]
    old_keys = [group_key_of(1, config, "10min_16mb", "H100:8", False) for config, _ in runs]
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO teams (id, name, weight, created_at) VALUES (1, 'team-a', 1, :t)"), {"t": now})
            conn.execute(text("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'alice', false, :t)"), {"t": now})
            for key, (config, kind) in dict(zip(old_keys, runs)).items():
                conn.execute(text("INSERT INTO run_groups (key, team_id, name, track, hardware, kind, config, allow_noncompliant, created_at)"
                                  " VALUES (:key, 1, 'g', '10min_16mb', 'H100:8', :kind, :config, false, :t)"),
                             {"key": key, "kind": kind, "config": json.dumps(config), "t": now})
            for i, ((config, kind), key) in enumerate(zip(runs, old_keys), start=1):
                conn.execute(text(
                    "INSERT INTO runs (id, team_id, user_id, name, notes, spec, seed, group_key, track, hardware, priority, status,"
                    " status_reason, attempts, submitted_at, log_bytes, kind)"
                    " VALUES (:id, 1, 1, 'r', '', :spec, :seed, :key, '10min_16mb', 'H100:8', 0, 'SUCCEEDED', '', 1, :t, 0, :kind)"
                ), {"id": i, "spec": json.dumps(config), "seed": i, "key": key, "t": now, "kind": kind})
            conn.execute(text("INSERT INTO sweeps (id, team_id, user_id, name, notes, track, hardware, strategy, spec, status, status_reason,"
                              " created_at, updated_at) VALUES (1, 1, 1, 's', '', '10min_16mb', 'H100:8', 'grid', :spec, 'running', '', :t, :t)"),
                         {"spec": json.dumps({"base": {"NUM_LAYERS": 9}, "promote": {"baseline": old_keys[0]}}), "t": now})
            conn.execute(text("INSERT INTO sweep_trials (id, sweep_id, number, params, group_key, run_ids, status, reason, created_at)"
                              " VALUES (1, 1, 1, '{}', :key, '[1, 2]', 'complete', '', :t)"), {"key": old_keys[0], "t": now})

        upgrade(empty_url, "head")
        on_0323 = {"NUM_LAYERS": 9, "STACK": "2026-03-23"}
        new_key = group_key_of(1, on_0323, "10min_16mb", "H100:8", False)
        with engine.connect() as conn:
            specs = {r.id: (_json(r.spec), r.group_key) for r in conn.execute(text("SELECT id, spec, group_key FROM runs"))}
            groups = {g.key: _json(g.config) for g in conn.execute(text("SELECT key, config FROM run_groups"))}
            sweep = _json(conn.execute(text("SELECT spec FROM sweeps")).scalar_one())
            trial_key = conn.execute(text("SELECT group_key FROM sweep_trials")).scalar_one()
        assert specs[1] == specs[2] == (on_0323, new_key)  # the same knobs, now said to be the 2026-03-23 stack
        assert specs[3] == ({"STACK": "2026-04-27"}, old_keys[2]) and specs[4] == (runs[3][0], old_keys[3])  # unchanged
        assert groups == {new_key: on_0323, old_keys[2]: {"STACK": "2026-04-27"}, old_keys[3]: runs[3][0]}
        assert sweep == {"base": on_0323, "promote": {"baseline": new_key}} and trial_key == new_key

        downgrade(empty_url, "0018")
        assert _keys(engine) == dict(enumerate(old_keys, start=1))
    finally:
        engine.dispose()


def _keys(engine) -> dict[int, str]:  # noqa: ANN001
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, group_key FROM runs ORDER BY id")).all())


def _json(value):  # noqa: ANN001, ANN202 - JSON comes back as text on SQLite
    return json.loads(value) if isinstance(value, str) else value
