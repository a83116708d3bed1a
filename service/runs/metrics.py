"""A run's metric points one page at a time (GET /runs/{id}/metrics): a run with millions of
points answered 210 MB in 48.8 s in one response before it was paged."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Metric
from service.runs.queries import visible_run
from service.teams.tokens import Principal

PAGE_MAX = 10_000  # points one page may hold (also the default page)


def metrics_page(session: Session, principal: Principal, run_id: int, offset: int, limit: int) -> tuple[list[Metric], bool]:
    """Points ``offset``.. ``offset + limit`` of the run (by step, all attempts), and whether more follow."""
    visible_run(session, principal, run_id)
    rows = list(session.scalars(select(Metric).where(Metric.run_id == run_id).order_by(Metric.step, Metric.id).offset(offset).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
