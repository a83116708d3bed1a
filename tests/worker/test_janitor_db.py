"""janitor_pass on PostgreSQL with the local launcher: stale runs are dispatched again or requeued, with events."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from service.accounts import create_team, create_user
from service.db import get_sessionmaker
from service.models import Run, RunEvent, Team, User, utcnow
from tests.fresh_db import fresh_database
from worker.janitor import janitor_pass
from worker.launchers.local import LocalLauncher
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        maker = get_sessionmaker(url)
        with maker() as s:
            create_team(s, "jan")
            create_user(s, "jan")
            s.commit()
        yield maker


def add_run(maker, status: str, *, silent_s: float, handle: dict | None = None, attempts: int = 0) -> int:
    with maker() as s:
        team = s.scalar(select(Team.id).where(Team.name == "jan"))
        user = s.scalar(select(User.id).where(User.name == "jan"))
        run = Run(team_id=team, user_id=user, name="j", spec={}, seed=1, group_key="g", track="unlimited", hardware="cpu", priority=0,
                  status=status, submitted_at=utcnow(), heartbeat_at=utcnow() - timedelta(seconds=silent_s), launch_handle=handle,
                  worker_task_id="dead-worker", attempts=attempts)  # fmt: skip
        s.add(run)
        s.commit()
        return run.id


def test_stale_runs_are_redispatched_or_requeued_and_fresh_ones_left_alone(maker, tmp_path: Path) -> None:
    settings = WorkerSettings(home=tmp_path, heartbeat_s=1, stale_heartbeats=3, gpu_count=0)
    gone = {"launcher": "local", "cluster": "local", "job_id": "x", "data": {"pid": 999999, "create_time": 1.0, "workdir": str(tmp_path / "nowhere")}}
    no_job = add_run(maker, "PROVISIONING", silent_s=10)
    lost = add_run(maker, "RUNNING", silent_s=10, handle=gone)
    lost_last_try = add_run(maker, "RUNNING", silent_s=10, handle=gone, attempts=2)
    fresh = add_run(maker, "RUNNING", silent_s=0.5, handle=gone)
    sent: list[int] = []
    with maker() as s:
        actions = janitor_pass(s, launcher=LocalLauncher(settings), settings=settings, enqueue=sent.append)
    assert {(a.run_id, a.action) for a in actions} == {(no_job, "redispatch"), (lost, "requeue"), (lost_last_try, "fail")}
    assert sent == [no_job]
    with maker() as s:
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_([no_job, lost, lost_last_try, fresh])))}
        assert runs[no_job].status == "PROVISIONING" and runs[no_job].worker_task_id is None  # the lease is free for a new executor
        assert (runs[lost].status, runs[lost].attempts, runs[lost].launch_handle) == ("QUEUED", 1, None)
        assert runs[lost_last_try].status == "FAILED" and "3 attempts" in runs[lost_last_try].status_reason
        assert runs[fresh].status == "RUNNING"
        actors = set(s.scalars(select(RunEvent.actor).where(RunEvent.run_id.in_([no_job, lost, lost_last_try]))))
        assert actors == {"janitor"}
    with maker() as s:  # the redispatch restarted the clock: nothing more to do right away
        assert janitor_pass(s, launcher=LocalLauncher(settings), settings=settings, enqueue=sent.append) == []
