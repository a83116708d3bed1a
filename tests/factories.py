"""Test factories: a run row and a team with a member, with every column a test does not care about filled.

A test names only what it is about (``make_run(team, user, status="RUNNING", hardware="H100:8")``);
the rest is a QUEUED cpu run on the unlimited track with an empty spec, submitted now.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.core.models import Run, Team, User, utcnow
from service.runs.lifecycle import record_created
from service.teams.accounts import add_member, create_team, create_user


def make_run(team_id: int, user_id: int, **columns: Any) -> Run:
    """A Run row, not yet added to a session; ``columns`` override the defaults (any Run column)."""
    values: dict[str, Any] = dict(name="r", spec={}, seed=1, group_key="g", track="unlimited", hardware="cpu", priority=0, status="QUEUED",
                                  submitted_at=utcnow())  # fmt: skip
    values.update(columns)
    return Run(team_id=team_id, user_id=user_id, **values)


def add_queued_run(session: Session, team_id: int, user_id: int, **columns: Any) -> Run:
    """A QUEUED run added and flushed with its creation event, as a submission leaves it (not committed)."""
    run = make_run(team_id, user_id, **columns)
    session.add(run)
    session.flush()
    record_created(session, run, actor="test")
    return run


def make_team(session: Session, name: str, user: str | None = None, *, budget_gpu_hours: float | None = None) -> tuple[Team, User]:
    """A team and one member (named ``user``, else after the team), flushed (not committed)."""
    team = create_team(session, name, budget_gpu_hours=budget_gpu_hours)
    member = create_user(session, user or f"{name}-user")
    add_member(session, team, member)
    session.flush()
    return team, member
