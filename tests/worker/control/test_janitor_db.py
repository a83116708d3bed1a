"""janitor_pass on PostgreSQL with the local launcher: stale runs are dispatched again, one
message per run in flight, and the janitor never moves a run's status (its executor does)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import Run, RunEvent, Team, User, utcnow
from service.core.settings import Settings
from service.core.storage import LocalArtifactStore
from service.teams.accounts import create_team, create_user
from tests.factories import make_run
from tests.fresh_db import fresh_database
from worker.control.janitor import janitor_pass
from worker.launchers.local import LocalLauncher
from worker.run.executor import execute_run
from worker.run.lease import is_dispatch_mark


@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        maker = get_sessionmaker(url)
        with maker() as s:
            create_team(s, "jan")
            create_user(s, "jan")
            s.commit()
        yield maker


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, heartbeat_s=1, stale_heartbeats=3, gpu_count=0, redispatch_resend_s=120, max_attempts=3)


def gone(tmp_path: Path) -> dict:
    return {"launcher": "local", "cluster": "local", "job_id": "x", "data": {"pid": 999999, "create_time": 1.0, "workdir": str(tmp_path / "nowhere")}}


def add_run(maker, status: str, *, silent_s: float, handle: dict | None = None, attempts: int = 0) -> int:
    with maker() as s:
        team = s.scalar(select(Team.id).where(Team.name == "jan"))
        user = s.scalar(select(User.id).where(User.name == "jan"))
        run = make_run(team, user, name="j", status=status, heartbeat_at=utcnow() - timedelta(seconds=silent_s), launch_handle=handle,
                       worker_task_id="dead-worker", attempts=attempts)  # fmt: skip
        s.add(run)
        s.commit()
        return run.id


def janitor(maker, settings: Settings, sent: list[int], now=None, enqueue=None, queued=None):  # noqa: ANN001, ANN201
    with maker() as s:
        return janitor_pass(s, launcher=LocalLauncher(settings), settings=settings, enqueue=enqueue or sent.append, now=now, queued_messages=queued)


def test_stale_runs_are_dispatched_again_and_their_status_is_left_to_the_executor(maker, settings, tmp_path: Path) -> None:
    no_job = add_run(maker, "PROVISIONING", silent_s=10)
    lost = add_run(maker, "RUNNING", silent_s=10, handle=gone(tmp_path))
    fresh = add_run(maker, "RUNNING", silent_s=0.5, handle=gone(tmp_path))
    sent: list[int] = []
    actions = janitor(maker, settings, sent)
    assert sorted((a.run_id, a.action) for a in actions) == [(no_job, "redispatch"), (lost, "redispatch")]
    assert sorted(sent) == [no_job, lost]
    with maker() as s:
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_([no_job, lost, fresh])))}
        assert {i: r.status for i, r in runs.items()} == {no_job: "PROVISIONING", lost: "RUNNING", fresh: "RUNNING"}
        assert is_dispatch_mark(runs[no_job].worker_task_id) and is_dispatch_mark(runs[lost].worker_task_id)  # free for the next executor
        assert runs[fresh].worker_task_id == "dead-worker"
        events = list(s.scalars(select(RunEvent).where(RunEvent.run_id.in_([no_job, lost]))))
        assert {(e.actor, e.from_status == e.to_status) for e in events} == {("janitor", True)}
    # the executor that gets the message is the one that moves the run: the job is gone, so back to the queue
    store = LocalArtifactStore(tmp_path / "artifacts")
    out = execute_run(lost, launcher=LocalLauncher(settings), session_factory=maker, store=store, settings=settings)
    assert "QUEUED" in out
    with maker() as s:
        run = s.get(Run, lost)
        assert (run.status, run.attempts, run.launch_handle, run.worker_task_id) == ("QUEUED", 1, None, None)
        assert s.scalar(select(RunEvent.actor).where(RunEvent.run_id == lost, RunEvent.to_status == "QUEUED")) == "worker"


def test_one_message_per_run_while_no_worker_takes_it(maker, settings) -> None:
    run_id = add_run(maker, "RUNNING", silent_s=10, handle={"launcher": "local", "cluster": "local", "job_id": "y", "data": {}})
    sent: list[int] = []
    t0 = utcnow()
    janitor(maker, settings, sent, now=t0)
    # no worker is up: round after round of the janitor (a stale window is 3 s here) ...
    for k in range(1, 30):
        janitor(maker, settings, sent, now=t0 + timedelta(seconds=4 * k), queued=lambda: len(sent))
    assert sent.count(run_id) == 1  # ... and still one message for it in the queue
    # a message that nobody took after redispatch_resend_s may have been lost with the broker: one more
    janitor(maker, settings, sent, now=t0 + timedelta(seconds=121), queued=lambda: len(sent))
    assert sent.count(run_id) == 2
    # the broker lost its messages (an empty runs queue): sent again as soon as the run is stale
    janitor(maker, settings, sent, now=t0 + timedelta(seconds=121 + 4), queued=lambda: 0)
    assert sent.count(run_id) == 3
    with maker() as s:
        assert s.get(Run, run_id).status == "RUNNING"


def test_a_message_that_could_not_be_sent_is_sent_at_the_next_round(maker, settings) -> None:
    run_id = add_run(maker, "PROVISIONING", silent_s=10)

    def broker_down(_: int) -> None:
        raise ConnectionError("broker down")

    t0 = utcnow()
    assert janitor(maker, settings, [], now=t0, enqueue=broker_down) == []
    with maker() as s:
        assert s.get(Run, run_id).worker_task_id is None  # nothing in flight
    sent: list[int] = []
    janitor(maker, settings, sent, now=t0 + timedelta(seconds=1))
    assert run_id in sent


@pytest.mark.parametrize("broker", ["redis", "sqlite"])
def test_the_runs_queue_is_counted_on_the_real_broker(broker: str, redis_url: str, tmp_path: Path) -> None:
    import uuid

    from worker.celery_app import make_celery
    from worker.tasks import runs_queue_length

    queue = f"runs-test-{uuid.uuid4().hex[:8]}"  # a queue of its own: no worker of another test consumes from it
    url = redis_url if broker == "redis" else f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    app = make_celery(Settings(home=tmp_path, broker_url=url))
    assert runs_queue_length(app, queue) == 0
    for run_id in (1, 2):
        app.send_task("caddie.nothing", args=[run_id], queue=queue)
    assert runs_queue_length(app, queue) == 2
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    assert runs_queue_length(app, queue) == 0


def dead_holder() -> str:
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:0123456789ab"  # a lease token whose process is dead


def test_a_run_whose_worker_process_died_on_this_host_is_dispatched_again_without_waiting_for_staleness(maker, settings, tmp_path: Path) -> None:
    import os
    import socket

    from worker.run.lease import Lease, holder_gone

    dead, alive, elsewhere = dead_holder(), f"{socket.gethostname()}:{os.getpid()}:x", "another-host:1:x"
    assert (holder_gone(dead), holder_gone(alive), holder_gone(elsewhere), holder_gone("dispatched@2026-01-01T00:00:00")) == (True, False, False, False)
    runs = {}
    for token in (dead, alive, elsewhere):
        runs[token] = add_run(maker, "RUNNING", silent_s=0.5, handle=gone(tmp_path))  # fresh heartbeats
        with maker() as s:
            s.get(Run, runs[token]).worker_task_id = token
            s.commit()
    sent: list[int] = []
    actions = janitor(maker, settings, sent)
    assert [a.run_id for a in actions] == [runs[dead]] and "worker process is gone" in actions[0].reason
    assert sent == [runs[dead]]
    # the executor that gets a redelivered message need not wait either
    with maker() as s:
        s.get(Run, runs[alive]).worker_task_id = dead_holder()
        s.commit()
    assert Lease(maker, runs[alive], 1, 3600).claim()
    assert not Lease(maker, runs[elsewhere], 1, 3600).claim()
