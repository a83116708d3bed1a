"""Retention on PostgreSQL (issue 17 item 5e): a run ended longer ago than CADDIE_RETENTION_DAYS
loses its artifacts, run folder and the script files no wanted run names; newer runs keep theirs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import Artifact, Run, RunEvent, ScriptFile, utcnow
from service.core.storage import LocalArtifactStore
from service.teams.accounts import create_team, create_user
from tests.factories import make_run
from tests.fresh_db import fresh_database
from worker.control.retention import retention_pass


@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        yield get_sessionmaker(url)


def _script_run(s, team_id: int, user_id: int, status: str, ended_days_ago: float | None, script_sha: str) -> Run:  # noqa: ANN001
    finished = utcnow() - timedelta(days=ended_days_ago) if ended_days_ago is not None else None
    run = make_run(team_id, user_id, kind="script", spec={"script": script_sha, "files": {"h.py": "shared"}, "env": {}, "data": "sp1024"},
                   status=status, submitted_at=utcnow() - timedelta(days=60), finished_at=finished)  # fmt: skip
    s.add(run)
    s.flush()
    return run


def test_expired_outputs_go_and_wanted_ones_stay(maker, tmp_path: Path) -> None:  # noqa: ANN001
    store = LocalArtifactStore(tmp_path / "artifacts")
    runs_dir = tmp_path / "runs"
    long_ago = utcnow() - timedelta(days=60)
    with maker() as s:
        team, user = create_team(s, "ret"), create_user(s, "ret")
        s.flush()
        old = _script_run(s, team.id, user.id, "SUCCEEDED", 40, "oldsha")
        recent = _script_run(s, team.id, user.id, "SUCCEEDED", 1, "recentsha")
        queued = _script_run(s, team.id, user.id, "QUEUED", None, "queuedsha")
        for sha in ("oldsha", "recentsha", "queuedsha", "shared"):
            s.add(ScriptFile(sha256=sha, bytes=1, content=b"x", created_at=long_ago))
        for run in (old, recent):
            (runs_dir / str(run.id) / "attempt-1").mkdir(parents=True)
            out = tmp_path / f"model-{run.id}.bin"
            out.write_bytes(b"weights")
            uri, size, sha = store.put(run.id, "model", out)
            s.add(Artifact(run_id=run.id, kind="model", uri=uri, bytes=size, sha256=sha))
        s.commit()
        ids = (old.id, recent.id, queued.id)

    with maker() as s:
        removed = retention_pass(s, store=store, runs_dir=runs_dir, days=30, now=utcnow())
    assert removed == 3  # the old run's artifact and folder, its own script file
    with maker() as s:
        arts = {a.run_id: a for a in s.scalars(select(Artifact))}
        files = set(s.scalars(select(ScriptFile.sha256)))
        events = [e.reason for e in s.scalars(select(RunEvent).where(RunEvent.run_id == ids[0]))]
    assert ids[0] not in arts and ids[1] in arts
    assert store.path_of(arts[ids[1]].uri).exists()
    assert not (runs_dir / str(ids[0])).exists() and (runs_dir / str(ids[1])).exists()
    assert files == {"recentsha", "queuedsha", "shared"}  # 'shared' is named by runs still wanted
    assert any("CADDIE_RETENTION_DAYS" in e for e in events)
    with maker() as s:  # nothing left to do: a second round removes nothing, and 0 days keeps all
        assert retention_pass(s, store=store, runs_dir=runs_dir, days=30, now=utcnow()) == 0
        assert retention_pass(s, store=store, runs_dir=runs_dir, days=0, now=utcnow() + timedelta(days=999)) == 0
