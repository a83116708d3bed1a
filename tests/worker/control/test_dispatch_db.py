"""dispatch_due_runs on a real PostgreSQL database: marks runs dispatched once, respects capacity."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text as sa_text

from service.core.db import get_sessionmaker
from service.core.models import Run, RunEvent, utcnow
from service.teams.accounts import add_member, create_team, create_user
from tests.factories import add_queued_run, make_run
from tests.fresh_db import fresh_database
from worker.control.dispatch import dispatch_due_runs


@pytest.fixture(scope="module")
def maker():
    # A database of its own: dispatch and the executor look at every run.
    with fresh_database() as url:
        yield _maker(url)


def _maker(pg_url: str):
    return get_sessionmaker(pg_url)


def test_each_queued_run_is_dispatched_once_within_capacity(maker) -> None:
    with maker() as s:
        team = create_team(s, "dispatch-a")
        user = create_user(s, "dispatch-u")
        add_member(s, team, user)
        runs = [add_queued_run(s, team.id, user.id, name=f"r{i}", seed=i) for i in range(3)]
        s.commit()
        ids = [r.id for r in runs]

    sent: list[int] = []
    with maker() as s:
        first = dispatch_due_runs(s, capacity={"cpu": 2}, enqueue=sent.append)
    with maker() as s:
        second = dispatch_due_runs(s, capacity={"cpu": 2}, enqueue=sent.append)
    assert first == ids[:2] and second == [] and sent == ids[:2]
    with maker() as s:
        status = dict(s.execute(select(Run.id, Run.status).where(Run.id.in_(ids))).all())
        assert status == {ids[0]: "PROVISIONING", ids[1]: "PROVISIONING", ids[2]: "QUEUED"}
        assert s.scalar(select(RunEvent.actor).where(RunEvent.run_id == ids[0], RunEvent.to_status == "PROVISIONING")) == "scheduler"
        assert s.get(Run, ids[0]).heartbeat_at is not None


def test_a_broker_error_leaves_the_run_dispatched_for_the_janitor(maker) -> None:
    with maker() as s:
        team = create_team(s, "dispatch-b")
        user = create_user(s, "dispatch-v")
        run = make_run(team.id, user.id, hardware="H100:8")
        s.add(run)
        s.commit()
        run_id = run.id

    def broken(_: int) -> None:
        raise ConnectionError("broker down")

    with maker() as s:
        assert dispatch_due_runs(s, capacity={"H100:8": 1}, enqueue=broken) == [run_id]
    with maker() as s:
        assert s.get(Run, run_id).status == "PROVISIONING"


def test_a_requeued_run_waits_out_its_backoff(maker) -> None:
    from datetime import timedelta

    from service.runs.lifecycle import transition

    with maker() as s:
        team = create_team(s, "dispatch-c")
        user = create_user(s, "dispatch-w")
        run = make_run(team.id, user.id, hardware="H200:8", status="PROVISIONING")
        s.add(run)
        s.flush()
        transition(s, run, "QUEUED", actor="worker", reason="no capacity")  # attempts 1
        s.commit()
        run_id = run.id
    sent: list[int] = []
    with maker() as s:
        assert dispatch_due_runs(s, capacity={"H200:8": 1}, enqueue=sent.append, retry_backoff_s=60) == []
    with maker() as s:
        later = utcnow() + timedelta(seconds=61)
        assert dispatch_due_runs(s, capacity={"H200:8": 1}, enqueue=sent.append, retry_backoff_s=60, now=later) == [run_id]


def test_a_run_whose_node_died_is_relaunched_at_once_and_a_later_capacity_requeue_waits(maker) -> None:
    """Issue 21 item 7: waiting does not bring a dead node back; the next launch asks for a fresh one."""
    from datetime import timedelta

    from service.runs.lifecycle import transition

    with maker() as s:
        team = create_team(s, "dispatch-d")
        user = create_user(s, "dispatch-x")
        run = make_run(team.id, user.id, hardware="B200:8", status="RUNNING")
        s.add(run)
        s.flush()
        transition(s, run, "QUEUED", actor="worker", reason="node lost: the job's driver died: the node was preempted or failed")
        s.commit()
        run_id = run.id
    sent: list[int] = []
    with maker() as s:
        assert dispatch_due_runs(s, capacity={"B200:8": 1}, enqueue=sent.append, retry_backoff_s=60) == [run_id]
    with maker() as s:
        run = s.get_one(Run, run_id)
        transition(s, run, "QUEUED", actor="worker", reason="no node: no capacity")  # attempts 2: this one waits
        s.commit()
    with maker() as s:
        assert dispatch_due_runs(s, capacity={"B200:8": 1}, enqueue=sent.append, retry_backoff_s=60) == []
        # the first wait, 60 s: the lost node before it does not double it (was 120 s)
        assert dispatch_due_runs(s, capacity={"B200:8": 1}, enqueue=sent.append, retry_backoff_s=60, now=utcnow() + timedelta(seconds=50)) == []
        later = utcnow() + timedelta(seconds=61)
        assert dispatch_due_runs(s, capacity={"B200:8": 1}, enqueue=sent.append, retry_backoff_s=60, now=later) == [run_id]


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_the_queued_hardware_is_read_by_index_probes_on_both_databases(engine: str, tmp_path) -> None:
    """What the free-slot check reads before a tick does anything: each hardware some queued run asks for, once
    (a skip scan of ix_runs_status_hardware, which PostgreSQL answers without reading the queue row by row)."""
    from service.core.migrate import upgrade
    from worker.control.dispatch import queued_hardware

    with fresh_database() if engine == "postgresql" else _sqlite(tmp_path) as url:
        upgrade(url)
        make = get_sessionmaker(url)
        with make() as s:
            team = create_team(s, f"hw-{engine}")
            user = create_user(s, f"hw-{engine}-u")
            add_member(s, team, user)
            assert queued_hardware(s) == []
            for i, hw in enumerate(["H100:8", "cpu", "H100:8", "A100:4", "cpu", "H200:1"]):
                add_queued_run(s, team.id, user.id, name=f"q{i}", seed=i, hardware=hw)
            s.add(make_run(team.id, user.id, name="done", seed=99, hardware="L4:1", status="SUCCEEDED"))
            s.commit()
            assert queued_hardware(s) == ["A100:4", "H100:8", "H200:1", "cpu"]  # not L4:1: nothing queued asks for it
            if engine == "postgresql":
                assert s.scalar(sa_text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_runs_status_hardware'")) == 1


def _sqlite(tmp_path):
    from contextlib import nullcontext

    return nullcontext(f"sqlite:///{tmp_path / 'hw.db'}")
