"""A team's use of compute: GPU-hours per day against its budget, and its queue.

GPU-hours of a run = GPUs of its hardware string (``H100:8`` -> 8, ``cpu`` -> 0)
x the hours between ``started_at`` and ``finished_at`` (now, while it runs),
split at midnight UTC into days. The scheduler (worker/scheduler.py) charges
budgets with the same ``gpus_of`` over a rolling period.

Queue positions: inside a team the scheduler starts runs by priority (higher
first), then submission time, then id; between teams it takes turns by fair
share, which depends on every team's usage. So a position here is the run's
place in its own team's queue for its hardware: the runs of the team that
will start before it. That is as far as the service can promise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Run, Team, User, utcnow
from service.security import Principal

ACTIVE = ("PROVISIONING", "RUNNING")


def gpus_of(hardware: str) -> int:
    """GPUs a hardware string asks for: ``H100:8`` -> 8, ``H100`` -> 1, ``cpu`` -> 0."""
    name, _, count = hardware.partition(":")
    if name.strip().lower() in ("", "cpu", "local"):
        return 0
    try:
        return max(0, int(count)) if count else 1
    except ValueError:
        return 1


def gpu_hours_per_day(
    runs: Iterable[tuple[str, datetime, datetime | None]], first_day: date, last_day: date, now: datetime
) -> dict[date, float]:
    """GPU-hours per UTC day in [first_day, last_day] of runs given as (hardware, started_at, finished_at or None)."""
    out = {first_day + timedelta(days=i): 0.0 for i in range((last_day - first_day).days + 1)}
    window_start = datetime.combine(first_day, datetime.min.time(), timezone.utc)
    window_end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), timezone.utc)
    for hardware, started, finished in runs:
        gpus = gpus_of(hardware)
        start, end = max(started, window_start), min(finished or now, window_end)
        while gpus and start < end:
            midnight = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), timezone.utc)
            piece_end = min(end, midnight)
            out[start.date()] += gpus * (piece_end - start).total_seconds() / 3600
            start = piece_end
    return out


@dataclass(frozen=True)
class TeamUsageView:
    team_id: int
    team: str
    budget_gpu_hours: float | None
    days: list[date]
    gpu_hours: list[float]

    @property
    def total(self) -> float:
        return sum(self.gpu_hours)


def visible_teams(session: Session, principal: Principal) -> list[Team]:
    query = select(Team).order_by(Team.name)
    if not principal.is_admin:
        query = query.where(Team.id.in_(sorted(principal.roles)))
    return list(session.scalars(query))


def team_usage(session: Session, team: Team, *, days: int = 30, now: datetime | None = None) -> TeamUsageView:
    """GPU-hours per day over the last ``days`` days (today included)."""
    now = now or utcnow()
    last = now.date()
    first = last - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), timezone.utc)
    rows = session.execute(
        select(Run.hardware, Run.started_at, Run.finished_at).where(
            Run.team_id == team.id, Run.started_at.is_not(None), (Run.finished_at.is_(None)) | (Run.finished_at >= since)
        )
    ).all()
    per_day = gpu_hours_per_day([(h, s, f) for h, s, f in rows], first, last, now)
    return TeamUsageView(team.id, team.name, team.budget_gpu_hours, list(per_day), list(per_day.values()))


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
    position: int | None  # 1 = next of its team on its hardware; None while it runs


def team_queue(session: Session, team: Team) -> list[QueueEntry]:
    """The team's active runs, then its queued runs in the order the scheduler takes them."""
    rows = session.execute(
        select(Run.id, Run.name, User.name.label("user"), Run.hardware, Run.priority, Run.submitted_at, Run.status)
        .join(User, User.id == Run.user_id)
        .where(Run.team_id == team.id, Run.status.in_(("QUEUED", *ACTIVE)))
    ).all()
    active = sorted((r for r in rows if r.status != "QUEUED"), key=lambda r: r.id)
    queued = sorted((r for r in rows if r.status == "QUEUED"), key=lambda r: (-r.priority, r.submitted_at, r.id))
    out = [QueueEntry(r.id, r.name, r.user, team.name, r.hardware, r.priority, r.submitted_at, r.status, None) for r in active]
    positions: dict[str, int] = {}
    for r in queued:
        positions[r.hardware] = positions.get(r.hardware, 0) + 1
        out.append(QueueEntry(r.id, r.name, r.user, team.name, r.hardware, r.priority, r.submitted_at, r.status, positions[r.hardware]))
    return out


def queued_by_hardware(session: Session) -> dict[str, int]:
    """Queued runs per hardware over all teams (counts only: other teams' runs stay private)."""
    rows = session.execute(select(Run.hardware, func.count()).where(Run.status == "QUEUED").group_by(Run.hardware))
    return {hardware: count for hardware, count in rows}
