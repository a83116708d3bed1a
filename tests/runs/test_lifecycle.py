"""The run state machine: every edge, legal or not, and the events it writes."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db import get_sessionmaker
from service.core.models import Run, RunEvent, Team, User
from service.core.status import ALLOWED, TERMINAL, IllegalTransition, RunStatus, check_transition
from service.runs.lifecycle import record_created, transition
from tests.factories import make_run

S = RunStatus
LEGAL = {
    (S.QUEUED, S.PROVISIONING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.PROVISIONING, S.RUNNING), (S.PROVISIONING, S.QUEUED), (S.PROVISIONING, S.FAILED), (S.PROVISIONING, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED), (S.RUNNING, S.QUEUED), (S.RUNNING, S.ABORTED_BEHIND),
}  # fmt: skip
ALL_PAIRS = list(itertools.product(RunStatus, RunStatus))


def test_table_is_what_the_design_says() -> None:
    assert {(f, t) for f, tos in ALLOWED.items() for t in tos} == LEGAL
    assert TERMINAL == {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.ABORTED_BEHIND}


@pytest.mark.parametrize(("frm", "to"), ALL_PAIRS, ids=[f"{f.value}->{t.value}" for f, t in ALL_PAIRS])
def test_check_transition(frm: RunStatus, to: RunStatus) -> None:
    if (frm, to) in LEGAL:
        check_transition(frm, to)
        check_transition(frm.value, to.value)  # plain strings from the database work too
    else:
        with pytest.raises(IllegalTransition):
            check_transition(frm, to)


def test_unknown_status_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        check_transition("QUEUED", "PAUSED")


def _run(session: Session, status: RunStatus = S.QUEUED) -> Run:
    team = session.scalar(select(Team).where(Team.name == "t")) or Team(name="t")
    user = session.scalar(select(User).where(User.name == "u")) or User(name="u")
    session.add_all([team, user])
    session.flush()
    run = make_run(team.id, user.id, group_key="g" * 64, status=status.value)
    session.add(run)
    session.flush()
    record_created(session, run, actor="test")
    session.commit()
    return run


def _events(session: Session, run: Run) -> list[RunEvent]:
    return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id)))


@pytest.mark.parametrize(("frm", "to"), sorted(LEGAL), ids=[f"{f.value}->{t.value}" for f, t in sorted(LEGAL)])
def test_legal_transition_updates_run_and_writes_event(session: Session, db_url: str, frm: RunStatus, to: RunStatus) -> None:
    run = _run(session, frm)
    event = transition(session, run, to, actor="worker:1", reason="because")
    session.commit()
    fresh = get_sessionmaker(db_url)()
    try:
        stored = fresh.get_one(Run, run.id)
        assert stored.status == to.value and stored.status_reason == "because"
        assert (stored.finished_at is not None) == (to in TERMINAL)
        assert stored.attempts == (1 if to is S.QUEUED else 0)
        if to is S.RUNNING:
            assert stored.started_at is not None and stored.started_at.tzinfo is not None
        events = _events(fresh, run)
        assert [(e.from_status, e.to_status, e.actor, e.reason) for e in events] == [
            (None, frm.value, "test", "submitted"),
            (frm.value, to.value, "worker:1", "because"),
        ]
        assert events[-1].id == event.id
    finally:
        fresh.close()


@pytest.mark.parametrize(("frm", "to"), sorted(set(ALL_PAIRS) - LEGAL), ids=[f"{f.value}->{t.value}" for f, t in sorted(set(ALL_PAIRS) - LEGAL)])
def test_illegal_transition_raises_and_writes_nothing(session: Session, frm: RunStatus, to: RunStatus) -> None:
    run = _run(session, frm)
    with pytest.raises(IllegalTransition):
        transition(session, run, to, actor="worker:1")
    session.commit()
    session.expire_all()
    assert session.get_one(Run, run.id).status == frm.value
    assert len(_events(session, run)) == 1


def test_retry_counts_attempts(session: Session) -> None:
    run = _run(session)
    for attempt in (1, 2):
        transition(session, run, S.PROVISIONING, actor="scheduler")
        transition(session, run, S.RUNNING, actor="worker")
        transition(session, run, S.QUEUED, actor="worker", reason="preempted")
        session.commit()
        assert run.attempts == attempt and run.started_at is None
    assert session.scalar(select(func.count()).select_from(RunEvent).where(RunEvent.run_id == run.id)) == 7


def test_transition_rolls_back_with_the_callers_transaction(session: Session) -> None:
    run = _run(session)
    transition(session, run, S.PROVISIONING, actor="scheduler")
    session.rollback()
    assert session.get_one(Run, run.id).status == "QUEUED"
    assert len(_events(session, run)) == 1


def test_racing_transitions_only_one_wins(session: Session, db_url: str) -> None:
    """Two processes saw QUEUED; the scheduler dispatches, the user cancels: one loses."""
    run = _run(session)
    other = get_sessionmaker(db_url)()
    try:
        theirs = other.get_one(Run, run.id)
        assert theirs.status == "QUEUED"
        transition(session, run, S.PROVISIONING, actor="scheduler")
        session.commit()
        with pytest.raises(IllegalTransition, match="no longer QUEUED"):
            transition(other, theirs, S.CANCELLED, actor="user:u")
        other.rollback()
    finally:
        other.close()
    session.expire_all()
    assert session.get_one(Run, run.id).status == "PROVISIONING"
    assert [e.to_status for e in _events(session, run)] == ["QUEUED", "PROVISIONING"]
