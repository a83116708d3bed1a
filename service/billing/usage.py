"""A team's use of compute: GPU-hours per day against its budget, and its queue.

GPU-hours and cost per day come from service.billing.accounting (billed from a run's
PROVISIONING to its release, GPUs of its hardware string: ``H100:8`` -> 8,
``cpu`` -> 0), so the page and ``GET /teams/{name}/usage`` agree.

Queue positions and estimated starts are the scheduler's forecast
(service.queue.positions): its policy played forward over every team's runs, each taking
its time cap. A position is the run's place among all runs of its hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.billing import accounting
from service.core.models import Run, Team, User, utcnow
from service.core.status import ACTIVE_VALUES, RunStatus
from service.queue.forecast import QueueEstimate
from service.teams.tokens import Principal

ACTIVE = ACTIVE_VALUES
QUEUED = RunStatus.QUEUED.value


@dataclass(frozen=True)
class TeamUsageView:
    team_id: int
    team: str
    budget_gpu_hours: float | None
    days: list[date]
    gpu_hours: list[float]  # billed, per UTC day (service.billing.accounting)
    cost: list[float]  # dollars per UTC day at CADDIE_GPU_PRICES
    unpriced: list[str]  # hardware with GPUs but no price
    warm: accounting.WarmStarts  # runs started on a reused warm cluster, and the provisioning they saved

    @property
    def total(self) -> float:
        return sum(self.gpu_hours)

    @property
    def total_cost(self) -> float:
        return sum(self.cost)


def visible_teams(session: Session, principal: Principal) -> list[Team]:
    query = select(Team).order_by(Team.name)
    if not principal.is_admin:
        query = query.where(Team.id.in_(sorted(principal.roles)))
    return list(session.scalars(query))


def team_usage(
    session: Session,
    team: Team,
    prices: Mapping[str, float],
    *,
    days: int = 30,
    now: datetime | None = None,
    cold_provision_s: float = accounting.COLD_PROVISION_S,
) -> TeamUsageView:
    """Billed GPU-hours and cost per day over the last ``days`` days (today included), as
    ``GET /teams/{name}/usage`` counts them: from a run's PROVISIONING to its release; and its warm starts."""
    now = now or utcnow()
    since = datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), timezone.utc)
    report = accounting.usage_report(
        accounting.load_team_runs(session, team.id, since), prices, period="day", since=since, now=now, cold_provision_s=cold_provision_s
    )
    day_list = sorted(report.days)
    return TeamUsageView(team.id, team.name, team.budget_gpu_hours, day_list,
                         [report.days[d].gpu_hours for d in day_list], [report.days[d].cost for d in day_list], report.unpriced, report.warm)


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
