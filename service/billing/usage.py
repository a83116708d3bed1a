"""A team's use of compute: GPU-hours per day against its budget (its queue on the same page:
service/queue/team_view.py).

GPU-hours and cost per day come from service.billing.accounting (billed from a run's
PROVISIONING to its release, GPUs of its hardware string: ``H100:8`` -> 8,
``cpu`` -> 0), so the page and ``GET /teams/{name}/usage`` agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.billing import accounting
from service.core.models import Team, utcnow
from service.teams.tokens import Principal


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
    [view] = teams_usage(session, [team], prices, days=days, now=now, cold_provision_s=cold_provision_s)
    return view


def teams_usage(
    session: Session,
    teams: Sequence[Team],
    prices: Mapping[str, float],
    *,
    days: int = 30,
    now: datetime | None = None,
    cold_provision_s: float = accounting.COLD_PROVISION_S,
) -> list[TeamUsageView]:
    """``team_usage`` of each of ``teams``, in their order, from one read of all their billed runs (a global
    admin's page of 50 teams made 100 queries of it)."""
    now = now or utcnow()
    since = datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), timezone.utc)
    by_team: dict[int, list[accounting.RunRecord]] = {team.id: [] for team in teams}
    for record in accounting.load_runs(session, list(by_team), since, billed_only=True) if teams else ():
        by_team[record.team_id].append(record)
    views = []
    for team in teams:
        report = accounting.usage_report(by_team[team.id], prices, period="day", since=since, now=now, cold_provision_s=cold_provision_s)
        day_list = sorted(report.days)
        views.append(TeamUsageView(team.id, team.name, team.budget_gpu_hours, day_list, [report.days[d].gpu_hours for d in day_list],
                                   [report.days[d].cost for d in day_list], report.unpriced, report.warm))  # fmt: skip
    return views
