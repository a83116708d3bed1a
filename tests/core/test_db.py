"""Engines and sessions: SQLite shared by several processes, session_scope, settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from service.core.db import get_engine, make_engine, session_scope
from service.core.migrate import upgrade
from service.core.models import Team
from service.core.settings import Settings


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        engine.dispose()


def test_engines_are_cached_per_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert get_engine(url) is get_engine(url)


def test_session_scope_commits_or_rolls_back(db_url: str) -> None:
    with session_scope(db_url) as s:
        s.add(Team(name="kept"))
    with pytest.raises(RuntimeError):
        with session_scope(db_url) as s:
            s.add(Team(name="lost"))
            s.flush()
            raise RuntimeError("boom")
    with session_scope(db_url) as s:
        assert list(s.scalars(select(Team.name))) == ["kept"]


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CADDIE_HOME", "CADDIE_DATABASE_URL", "CADDIE_MAX_SEEDS", "CADDIE_ALLOWED_HARDWARE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.database_url == "sqlite:///.caddie/caddie.db"
    assert s.hardware_choices == ["H100:8", "H100:1", "H200:8", "cpu"] and s.max_seeds == 16 and s.max_spec_bytes == 65536
    monkeypatch.setenv("CADDIE_HOME", str(tmp_path))
    monkeypatch.setenv("CADDIE_MAX_SEEDS", "4")
    monkeypatch.setenv("CADDIE_ALLOWED_HARDWARE", "cpu, H100:8")
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path}/caddie.db" and s.max_seeds == 4 and s.hardware_choices == ["cpu", "H100:8"]


def test_two_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    """An API process and a worker process both writing: the busy timeout makes them wait, not fail."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    upgrade(url)
    writer = textwrap.dedent(
        f"""
        import sys
        from service.core.db import session_scope
        from service.core.models import Team
        for i in range(150):
            with session_scope({url!r}) as s:
                s.add(Team(name=f"{{sys.argv[1]}}-{{i}}"))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", writer, tag], cwd=Path(__file__).resolve().parents[2]) for tag in ("api", "worker")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Team)) == 300
