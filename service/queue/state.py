"""The facts the scheduling policy decides on, read from the database (I/O).

One reader for the worker's dispatch and the API's forecasts: the queued runs
(with their expected time and their retry wait), the runs holding a slot (with
the time they are still expected to hold it), and each team's weight, budget
and billed GPU-hours over the budget period, measured by service.billing.accounting,
the figures ``GET /teams/{name}/usage`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from service.billing.accounting import billed_gpu_hours
from service.core.models import Run, RunEvent, Team
from service.core.status import ACTIVE_VALUES, NODE_LOST, RunStatus, is_node_lost
from service.queue.estimates import expected_seconds
from service.queue.policy import ActiveRun, QueuedRun, TeamUsage

QUEUED = RunStatus.QUEUED.value
ACTIVE = ACTIVE_VALUES


@dataclass(frozen=True)
class QueueState:
    queued: list[QueuedRun]
    running: list[ActiveRun]
    usage: dict[int, TeamUsage]
    not_before: dict[int, datetime]  # a requeued run's end of retry wait (only those still waiting)

    def ready(self, now: datetime) -> list[QueuedRun]:
        """The queued runs not inside a retry wait: those the scheduler may start now."""
        return [q for q in self.queued if self.not_before.get(q.id, now) <= now]


def retry_wait(attempts: int, backoff_s: float) -> timedelta:
    """How long a run requeued for the attempts-th time waits: backoff_s · 2^(attempts-1)."""
    return timedelta(seconds=backoff_s * 2 ** max(0, attempts - 1)) if attempts > 0 else timedelta(0)


# A run's time cap, the one part of its spec the policy reads, as two JSON lookups in the query
# (train_cap_s's keys): decoding every queued run's whole spec took ~0.4 s at 50,000 queued.
_CAP = Run.spec["MAX_WALLCLOCK_SECONDS"].label("cap")
_ENV_CAP = Run.spec[("env", "MAX_WALLCLOCK_SECONDS")].label("env_cap")


def _caps(cap: Any, env_cap: Any) -> dict[str, Any]:
    """The part of a spec train_cap_s reads, from the two lookups (None: the key is absent)."""
    spec: dict[str, Any] = {} if cap is None else {"MAX_WALLCLOCK_SECONDS": cap}
    if env_cap is not None:
        spec["env"] = {"MAX_WALLCLOCK_SECONDS": env_cap}
    return spec


def load_queue_state(session: Session, *, now: datetime, budget_period: timedelta, retry_backoff_s: float, run_overhead_s: float) -> QueueState:
    """Everything the policy needs, as of ``now``."""
    rows = list(
        session.execute(
            select(Run.id, Run.team_id, Run.hardware, Run.priority, Run.submitted_at, Run.attempts, _CAP, _ENV_CAP).where(Run.status == QUEUED)
        )
    )
    queued = [QueuedRun(r.id, r.team_id, r.hardware, r.priority, r.submitted_at, expected_seconds(_caps(r.cap, r.env_cap), run_overhead_s)) for r in rows]
    not_before = _retry_ends(session, {r.id: r.attempts for r in rows if r.attempts}, retry_backoff_s, now)
    running = []
    for r in session.execute(select(Run.id, Run.team_id, Run.hardware, _CAP, _ENV_CAP, Run.started_at).where(Run.status.in_(ACTIVE))):
        # A RUNNING run holds its node until its start plus its expected time; one still
        # provisioning (no start yet) is expected to hold it for all of that time.
        held = (now - r.started_at).total_seconds() if r.started_at is not None else 0.0
        running.append(ActiveRun(r.id, r.team_id, r.hardware, max(0.0, expected_seconds(_caps(r.cap, r.env_cap), run_overhead_s) - held)))
    team_ids = {q.team_id for q in queued}
    used = billed_gpu_hours(session, team_ids, now - budget_period, now) if team_ids else {}
    usage = {
        t.id: TeamUsage(t.id, used.get(t.id, 0.0), t.weight, t.budget_gpu_hours)
        for t in session.scalars(select(Team).where(Team.id.in_(team_ids)))
    }
    return QueueState(queued, running, usage, not_before)


def _retry_ends(session: Session, attempts: dict[int, int], backoff_s: float, now: datetime) -> dict[int, datetime]:
    """End of the retry wait of each requeued run still inside it (measured from its last return to the queue);
    ``attempts``: the queued runs that were attempted, with their attempts.

    A run whose node died under it (its requeue's reason says "node lost") waits nothing: waiting
    would not bring the node back, and its next launch asks for a fresh one. Nor do its lost nodes
    lengthen a later wait: the backoff doubles with the attempts that ended otherwise (no capacity,
    a failed launch), as CADDIE_MAX_ATTEMPTS counts them."""
    if not attempts or backoff_s <= 0:
        return {}
    # The runs named by a sub-select, not by their ids: thousands of ids made each statement thousands of
    # parameters for the driver to parse. A run requeued since the first read may come back: it is skipped.
    retried = select(Run.id).where(Run.status == QUEUED, Run.attempts > 0).scalar_subquery()
    requeued = and_(RunEvent.run_id.in_(retried), RunEvent.to_status == QUEUED)
    latest = select(func.max(RunEvent.id)).where(requeued).group_by(RunEvent.run_id)
    last = session.execute(select(RunEvent.run_id, RunEvent.at, RunEvent.reason).where(RunEvent.id.in_(latest)))
    lost = dict(session.execute(
        select(RunEvent.run_id, func.count()).where(requeued, RunEvent.reason.startswith(NODE_LOST)).group_by(RunEvent.run_id)
    ).all())  # fmt: skip
    ends = {run_id: at + retry_wait(attempts[run_id] - lost.get(run_id, 0), backoff_s)
            for run_id, at, reason in last if run_id in attempts and at is not None and not is_node_lost(reason)}  # fmt: skip
    return {run_id: end for run_id, end in ends.items() if end > now}
