"""A team's queue as the usage page shows it: its active runs, then its queued runs in the order
the forecast starts them, and how many runs wait on each hardware over all teams.

Queue positions and estimated starts are the scheduler's forecast
(service.queue.positions): its policy played forward over every team's runs, each taking
its time cap. A position is the run's place among all runs of its hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import Run, Team, User
from service.core.status import ACTIVE_VALUES, RunStatus
from service.queue.forecast import QueueEstimate

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


def team_queue(session: Session, team: Team, estimates: Mapping[int, QueueEstimate]) -> list[QueueEntry]:
    """The team's active runs, then its queued runs in the order the forecast starts them
    (``estimates``: service.queue.positions.queue_estimates); runs not expected to start last."""
    rows = session.execute(
        select(Run.id, Run.name, User.name.label("user"), Run.hardware, Run.priority, Run.submitted_at, Run.status)
        .join(User, User.id == Run.user_id)
        .where(Run.team_id == team.id, Run.status.in_((QUEUED, *ACTIVE)))
    ).all()
    active = sorted((r for r in rows if r.status != QUEUED), key=lambda r: r.id)
    out = [QueueEntry(r.id, r.name, r.user, team.name, r.hardware, r.priority, r.submitted_at, r.status, None) for r in active]
    far = datetime.max.replace(tzinfo=timezone.utc)
    queued = []
    for r in (r for r in rows if r.status == QUEUED):
        e = estimates.get(r.id)
        queued.append(QueueEntry(r.id, r.name, r.user, team.name, r.hardware, r.priority, r.submitted_at, r.status,
                                 e.position if e else None, e.estimated_start_at if e else None, e.reason if e else ""))  # fmt: skip
    return out + sorted(queued, key=lambda q: (q.estimated_start_at or far, -q.priority, q.submitted_at, q.run_id))


def queued_by_hardware(session: Session) -> dict[str, int]:
    """Queued runs per hardware over all teams (counts only: other teams' runs stay private)."""
    rows = session.execute(select(Run.hardware, func.count()).where(Run.status == QUEUED).group_by(Run.hardware))
    return {hardware: count for hardware, count in rows}
