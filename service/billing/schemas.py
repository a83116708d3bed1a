"""Bodies of the team endpoints added for accounting: PATCH /teams/{name} and
GET /teams/{name}/usage (service/billing/accounting.py computes the figures)."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from datetime import date, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, computed_field
from pydantic.dataclasses import dataclass as body_dataclass

from service.billing.accounting import BudgetStanding, Figures, RunUsage, UsageReport


class TeamUpdate(BaseModel):
    """Fields left out stay as they are; ``budget_gpu_hours: null`` removes the budget."""

    # A JSON body may spell NaN, Infinity or 1e999; none is a value caddie stores.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    budget_gpu_hours: float | None = Field(None, ge=0, description="GPU-hours per budget period; null: no budget")
    weight: float | None = Field(None, gt=0, le=1000, description="fair-share weight")
    webhook_url: str | None = Field(None, max_length=2000, description="where the team's notifications are POSTed (team admins; null: none); http/https to a public address")


class PhaseOut(BaseModel):
    gpu_hours: float
    cost: float


class FiguresOut(BaseModel):
    gpu_hours: float
    cost: float = Field(description="dollars, at the configured prices per GPU-hour")
    phases: dict[str, PhaseOut]

    @classmethod
    def of(cls, f: Figures, **fields: Any) -> Self:
        """The body of ``f`` (GPU-seconds and dollars, per phase) with the subclass's own ``fields``."""
        phases = {p: PhaseOut(gpu_hours=s / 3600, cost=f.phase_cost[p]) for p, s in f.phases.items()}
        return cls(gpu_hours=f.gpu_hours, cost=f.cost, phases=phases, **fields)


class PeriodOut(FiguresOut):
    start: date


class UserUsageOut(FiguresOut):
    user: str


class RunUsageOut(FiguresOut):
    id: int
    name: str
    user: str
    hardware: str
    status: str
    attempts: int = Field(description="billed attempts (a requeued run has more than one)")

    @classmethod
    def of_run(cls, r: RunUsage) -> "RunUsageOut":
        """The domain's RunUsage, its fields by name, its figures flattened beside them."""
        return cls.of(r.figures, **{f.name: getattr(r, f.name) for f in dataclass_fields(r) if f.name != "figures"})


# The domain's BudgetStanding declares the figures once, the remaining GPU-hours included (shown as computed).
@body_dataclass(frozen=True)
class BudgetOut(BudgetStanding):
    remaining_gpu_hours = computed_field(BudgetStanding.remaining_gpu_hours)  # type: ignore[assignment]

    @classmethod
    def of(cls, b: BudgetStanding) -> "BudgetOut":
        return cls(b.budget_gpu_hours, b.period_days, b.used_gpu_hours)


class TeamUsageOut(BaseModel):
    team: str
    weight: float
    period: str
    since: datetime
    until: datetime
    currency: str = "USD"
    total: FiguresOut
    periods: list[PeriodOut]
    days: list[PeriodOut]
    users: list[UserUsageOut]
    runs: list[RunUsageOut]
    budget: BudgetOut
    unpriced_hardware: list[str] = Field(description="hardware with GPUs and no price: counted in GPU-hours, at $0")
    saved_gpu_hours: float = Field(0.0, description="GPU-hours early aborts saved in the window: each ABORTED_BEHIND run's expected time left when stopped")
    warm_starts: int = Field(0, description="runs whose latest attempt started in the window on a reused, kept-warm cluster instead of a new one")
    warm_start_saved_gpu_hours: float = Field(
        0.0,
        description="GPU-hours of provisioning those warm starts did not pay: per run, the median provisioning time of the team's cold starts "
        "of its hardware in the window (CADDIE_COLD_PROVISION_S when there is none) minus its own, x its GPUs",
    )
    warm_start_saved_cost: float = Field(0.0, description="those GPU-hours in dollars, at the configured prices per GPU-hour")

    @classmethod
    def of(cls, team: str, weight: float, report: UsageReport, budget: BudgetStanding) -> "TeamUsageOut":
        return cls(
            team=team,
            weight=weight,
            period=report.period,
            since=report.since,
            until=report.until,
            total=FiguresOut.of(report.total),
            periods=[PeriodOut.of(f, start=d) for d, f in sorted(report.periods.items())],
            days=[PeriodOut.of(f, start=d) for d, f in sorted(report.days.items())],
            users=[UserUsageOut.of(f, user=u) for u, f in report.users.items()],
            runs=[RunUsageOut.of_run(r) for r in report.runs],
            budget=BudgetOut.of(budget),
            unpriced_hardware=report.unpriced,
            saved_gpu_hours=report.saved_gpu_hours,
            warm_starts=report.warm.count,
            warm_start_saved_gpu_hours=report.warm.saved_gpu_hours,
            warm_start_saved_cost=report.warm.saved_cost,
        )
