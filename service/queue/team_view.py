"""A team's queue as the usage page shows it: its active runs, then its queued runs in the order
the forecast starts them, and how many runs wait on each hardware over all teams.

Queue positions and estimated starts are the scheduler's forecast
(service.queue.positions): its policy played forward over every team's runs, each taking
its time cap. A position is the run's place among all runs of its hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import Run, Team, User
from service.core.status import ACTIVE_VALUES, RunStatus
from service.queue.positions import QueueItem

ACTIVE = ACTIVE_VALUES
QUEUED = RunStatus.QUEUED.value


@dataclass(frozen=True)
class QueueEntry:
    run_id: int
    name: str
    user: str
    team: str
    hardware: str
    priority: int
    submitted_at: datetime
    status: str
    position: int | None  # 1 = the next run of any team on its hardware; None while it runs or when not expected to start
    estimated_start_at: datetime | None = None
    waiting_reason: str = ""


def team_queue(session: Session, team: Team, queued: Sequence[QueueItem]) -> list[QueueEntry]:
    """The team's active runs, then ``queued``: a page of its queued runs in the order the forecast starts
    them (service.queue.positions.list_queue, which reads the stored forecast's rank index, so a team
    with thousands queued costs one page, not its whole queue)."""
    rows = session.execute(
        select(Run.id, Run.name, User.name.label("user"), Run.hardware, Run.priority, Run.submitted_at, Run.status)
        .join(User, User.id == Run.user_id)
        .where(Run.team_id == team.id, Run.status.in_(ACTIVE))
        .order_by(Run.id)
    ).all()
    out = [QueueEntry(r.id, r.name, r.user, team.name, r.hardware, r.priority, r.submitted_at, r.status, None) for r in rows]
    return out + [QueueEntry(q.id, q.name, q.user, team.name, q.hardware, q.priority, q.submitted_at, QUEUED, q.estimate.position,
                             q.estimate.estimated_start_at, q.estimate.reason) for q in queued]  # fmt: skip


def runs_by_team(session: Session, team_ids: Sequence[int], statuses: Sequence[str]) -> dict[int, int]:
    """How many runs in ``statuses`` each of these teams has (one grouped count over the status index)."""
    if not team_ids:
        return {}
    rows = session.execute(select(Run.team_id, func.count()).where(Run.status.in_(statuses), Run.team_id.in_(team_ids)).group_by(Run.team_id))
    return {team_id: count for team_id, count in rows}


def queued_by_hardware(session: Session) -> dict[str, int]:
    """Queued runs per hardware over all teams (counts only: other teams' runs stay private)."""
    rows = session.execute(select(Run.hardware, func.count()).where(Run.status == QUEUED).group_by(Run.hardware))
    return {hardware: count for hardware, count in rows}
