"""Budgets in dispatch, on a real PostgreSQL database: measured in billed GPU-hours (the
accounting's figure, provisioning included), a team over budget starts nothing, a run
that would not fit its team's budget waits, and two schedulers at once stay within capacity."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from service.billing.accounting import billed_gpu_hours
from service.core.db import get_sessionmaker
from service.core.models import Run, RunEvent, utcnow
from tests.factories import add_queued_run, make_run, make_team
from tests.fresh_db import fresh_database
from worker.control.dispatch import dispatch_due_runs


@pytest.fixture()
def maker():
    # A database per test: dispatch looks at every run.
    with fresh_database() as url:
        yield get_sessionmaker(url)


def team_with_user(s, name: str, budget: float | None = None):  # noqa: ANN001, ANN201
    team, user = make_team(s, name, budget_gpu_hours=budget)
    s.commit()
    return team, user


def queue(s, team, user, n: int, *, spec: dict | None = None, hardware: str = "H100:8") -> list[int]:  # noqa: ANN001
    now = utcnow()
    runs = [add_queued_run(s, team.id, user.id, name=f"{team.name}-{i}", spec=spec or {}, seed=i, track="10min_16mb", hardware=hardware,
                           submitted_at=now + timedelta(microseconds=i)) for i in range(n)]  # fmt: skip
    s.commit()
    return [r.id for r in runs]


def billed_past_run(s, team, user, *, provisioning_h: float, running_h: float = 0.0) -> None:  # noqa: ANN001
    """A finished H100:8 run that held its node provisioning_h hours, then ran running_h hours."""
    end = utcnow() - timedelta(minutes=1)
    start = end - timedelta(hours=provisioning_h + running_h)
    run = make_run(team.id, user.id, name="past", seed=99, group_key="p", track="10min_16mb", hardware="H100:8", status="CANCELLED",
                   submitted_at=start, finished_at=end)  # fmt: skip
    s.add(run)
    s.flush()
    steps = [(start, "QUEUED", None), (start, "PROVISIONING", "QUEUED")]
    if running_h:
        steps.append((start + timedelta(hours=provisioning_h), "RUNNING", "PROVISIONING"))
    steps.append((end, "CANCELLED", steps[-1][1]))
    s.add_all(RunEvent(run_id=run.id, at=at, from_status=frm, to_status=to, actor="test") for at, to, frm in steps)
    s.commit()


def test_billed_provisioning_counts_against_the_budget(maker) -> None:
    # 2 h of provisioning on H100:8 that never ran: 16 billed GPU-hours, 0 running hours.
    # Running time alone (the old measure) would leave this team 10 GPU-hours to spend.
    with maker() as s:
        poor, pu = team_with_user(s, "poor", budget=10.0)
        rich, ru = team_with_user(s, "rich")
        billed_past_run(s, poor, pu, provisioning_h=2.0)
        poor_ids, rich_ids = queue(s, poor, pu, 2), queue(s, rich, ru, 1)
        assert billed_gpu_hours(s, [poor.id], utcnow() - timedelta(days=30), utcnow())[poor.id] == pytest.approx(16.0, abs=0.01)
    sent: list[int] = []
    with maker() as s:
        assert dispatch_due_runs(s, capacity={"*": 5}, enqueue=sent.append) == rich_ids
    with maker() as s:
        assert {s.get(Run, i).status for i in poor_ids} == {"QUEUED"}  # kept in the queue, not failed


def test_a_run_whose_expected_cost_exceeds_the_budget_left_waits(maker) -> None:
    # Budget 20 GPU-h, 8 billed: 12 left. Default expected time 600 + 1200 s = 0.5 h x 8 GPUs = 4 GPU-h each;
    # a run capped at 3 h of training (3.33 h x 8 = 26.7 GPU-h) cannot fit; the small ones can: 3 of them (12 GPU-h).
    with maker() as s:
        team, user = team_with_user(s, "capped", budget=20.0)
        billed_past_run(s, team, user, provisioning_h=0.5, running_h=0.5)
        big = queue(s, team, user, 1, spec={"MAX_WALLCLOCK_SECONDS": 10800})
        small = queue(s, team, user, 4)
    sent: list[int] = []
    with maker() as s:
        started = dispatch_due_runs(s, capacity={"*": 10}, enqueue=sent.append)
    assert started == small[:3] and big[0] not in started


def test_two_schedulers_at_once_never_exceed_capacity(maker) -> None:
    with maker() as s:
        teams = [team_with_user(s, f"t{i}") for i in range(3)]
        for team, user in teams:
            queue(s, team, user, 10)
    barrier = threading.Barrier(4)
    results: list[list[int]] = []

    def tick() -> None:
        barrier.wait()
        with maker() as s:
            results.append(dispatch_due_runs(s, capacity={"H100:8": 4}, enqueue=lambda _id: None))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    started = [i for r in results for i in r]
    assert len(started) == 4 == len(set(started))
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(Run).where(Run.status == "PROVISIONING")) == 4


def test_billing_reads_no_run_that_never_left_the_queue(maker) -> None:
    from service.billing.accounting import load_runs

    with maker() as s:
        team, user = team_with_user(s, "t")
        billed_past_run(s, team, user, provisioning_h=1.0)
        waiting = queue(s, team, user, 3)
        requeued = s.get(Run, waiting[0])
        requeued.attempts = 1  # sent back to the queue after a launch: may have billed time
        s.commit()
        since = utcnow() - timedelta(days=30)
        read = {r.run_id for r in load_runs(s, [team.id], since, billed_only=True)}
        assert waiting[0] in read and not read & set(waiting[1:])
        assert billed_gpu_hours(s, [team.id], since, utcnow())[team.id] == pytest.approx(8.0, abs=0.01)


def test_a_tick_with_no_free_slot_reads_next_to_nothing(maker) -> None:
    from sqlalchemy import event

    with maker() as s:
        team, user = team_with_user(s, "busy")
        ids = queue(s, team, user, 30)
    sent: list[int] = []
    with maker() as s:
        assert dispatch_due_runs(s, capacity={"*": 1}, enqueue=sent.append) == ids[:1]  # the one slot is now held
    statements: list[str] = []
    with maker() as s:
        event.listen(s.get_bind(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        assert dispatch_due_runs(s, capacity={"*": 1}, enqueue=sent.append) == []
    assert len(statements) <= 3 and not any("run_events" in q for q in statements), statements  # lock + two counts


def test_budget_reads_are_incremental_and_equal_a_full_read(maker) -> None:
    """An ended run's billed spans are kept: the next read of the same period reads no events of it,
    only of runs still going, and every figure equals the full computation."""
    from sqlalchemy import event

    from service.billing.accounting import billed_gpu_seconds, load_runs

    with maker() as s:
        team, user = team_with_user(s, "inc")
        for h in (1.0, 2.0, 0.5):
            billed_past_run(s, team, user, provisioning_h=h, running_h=h / 2)
        live = queue(s, team, user, 1)[0]
        run = s.get(Run, live)
        run.status, run.attempts = "RUNNING", 1
        start = utcnow() - timedelta(hours=1)
        s.add_all([RunEvent(run_id=live, at=start, from_status="QUEUED", to_status="PROVISIONING", actor="test"),
                   RunEvent(run_id=live, at=start + timedelta(minutes=10), from_status="PROVISIONING", to_status="RUNNING", actor="test")])  # fmt: skip
        s.commit()
        since, now = utcnow() - timedelta(days=30), utcnow()
        full = sum(billed_gpu_seconds(r, since, now) for r in load_runs(s, [team.id], since, billed_only=True)) / 3600
        reads: list[str] = []
        engine = s.get_bind().engine
        listen = lambda conn, cursor, statement, *a: reads.append(statement)  # noqa: E731
        event.listen(engine, "before_cursor_execute", listen)
        try:
            first = billed_gpu_hours(s, [team.id], since, now)[team.id]
            first_reads = [q for q in reads if "run_events" in q]
            reads.clear()
            second = billed_gpu_hours(s, [team.id], since, now)[team.id]
            second_reads = [q for q in reads if "run_events" in q]
        finally:
            event.remove(engine, "before_cursor_execute", listen)
        assert first == pytest.approx(full) and second == pytest.approx(full)
        assert full == pytest.approx(8 * (1.5 + 3.0 + 0.75) + 8 * 1.0, abs=0.01)
        assert first_reads and second_reads  # the running run's events are read each time...
        read_ids = {r.run_id for r in load_runs(s, [team.id], since, billed_only=True, only=[live])}
        assert read_ids == {live}  # ...and only its: the `only` filter the second read used
