"""Which queued runs start next: weighted fair share between teams, within budgets and capacity.

`pick_runs_to_start` is pure (plain values in, run ids out); `dispatch_due_runs`
reads the database, calls it, marks the picked runs dispatched (QUEUED ->
PROVISIONING, so the next tick does not pick them again) and enqueues them.

The policy, one slot at a time:

* free slots of a hardware kind = capacity(hardware) - runs of that kind
  already PROVISIONING or RUNNING;
* a team whose GPU-hours used in the budget period reach its budget gets nothing;
* among the other teams with a queued run that fits a free slot, the one with
  the lowest share score goes first::

      score(team) = (used_gpu_hours + Σ_active max(1, gpus(hardware)) · expected_run_hours) / weight

  where the sum runs over its runs already running plus those picked in this
  tick, so a team that just got a slot falls behind the others until they
  had theirs;
* a run sent back to the queue (no capacity, preemption) waits
  retry_backoff_s · 2^(attempts-1) before it is picked again (I/O side);
* ties: the team whose best run was submitted first, then the lower team id;
* inside a team: higher priority first, then submitted first, then lower id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.lifecycle import IllegalTransition, RunStatus, transition
from service.models import Run, RunEvent, Team, utcnow
from service.accounting import gpus_of  # one definition, shared with the accounting of billed GPU time
from worker.lease import dispatch_mark

log = logging.getLogger(__name__)

ACTOR = "scheduler"
ACTIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)
ANY_HARDWARE = "*"


@dataclass(frozen=True)
class QueuedRun:
    id: int
    team_id: int
    hardware: str
    priority: int
    submitted_at: datetime


@dataclass(frozen=True)
class ActiveRun:
    id: int
    team_id: int
    hardware: str


@dataclass(frozen=True)
class TeamUsage:
    team_id: int
    used_gpu_hours: float = 0.0
    weight: float = 1.0
    budget_gpu_hours: float | None = None  # None: no budget

    @property
    def over_budget(self) -> bool:
        return self.budget_gpu_hours is not None and self.used_gpu_hours >= self.budget_gpu_hours


def parse_capacity(spec: str, default: int) -> dict[str, int]:
    """``"H100:8=2,cpu=4"`` -> {"H100:8": 2, "cpu": 4, "*": default}. Raises ValueError naming the bad item."""
    out = {ANY_HARDWARE: default}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        hardware, sep, number = item.rpartition("=")
        if not sep or not hardware or not number.strip().isdigit():
            raise ValueError(f"CADDIE_CAPACITY item {item!r}: expected HARDWARE=N, e.g. H100:8=2")
        out[hardware.strip()] = int(number)
    return out


def pick_runs_to_start(
    queued: Iterable[QueuedRun],
    running: Iterable[ActiveRun],
    usage: Mapping[int, TeamUsage],
    capacity: Mapping[str, int],
    *,
    expected_run_hours: float = 1 / 3,
) -> list[int]:
    """Ids of the queued runs to start now, in start order (policy in the module docstring).

    ``capacity`` maps a hardware string to its most concurrent runs; ``"*"``
    is the limit for hardware not named (0 if absent). Teams missing from
    ``usage`` have used nothing, weigh 1 and have no budget.
    """
    running = list(running)
    free: dict[str, int] = {}
    # What each team already holds (running runs and, below, runs picked now).
    charge_by_team: dict[int, float] = {}
    for r in running:
        charge_by_team[r.team_id] = charge_by_team.get(r.team_id, 0.0) + max(1, gpus_of(r.hardware)) * expected_run_hours

    def free_slots(hardware: str) -> int:
        if hardware not in free:
            limit = capacity.get(hardware, capacity.get(ANY_HARDWARE, 0))
            free[hardware] = limit - sum(1 for r in running if r.hardware == hardware)
        return free[hardware]

    per_team: dict[int, list[QueuedRun]] = {}
    for q in sorted(queued, key=lambda q: (-q.priority, q.submitted_at, q.id)):
        per_team.setdefault(q.team_id, []).append(q)

    picked: list[int] = []
    while True:
        best: tuple[float, datetime, int] | None = None
        best_run: QueuedRun | None = None
        for team_id, runs in per_team.items():
            team = usage.get(team_id, TeamUsage(team_id))
            if team.over_budget:
                continue
            head = next((q for q in runs if free_slots(q.hardware) > 0), None)
            if head is None:
                continue
            score = (team.used_gpu_hours + charge_by_team.get(team_id, 0.0)) / max(team.weight, 1e-9)
            key = (score, head.submitted_at, team_id)
            if best is None or key < best:
                best, best_run = key, head
        if best_run is None:
            return picked
        picked.append(best_run.id)
        per_team[best_run.team_id].remove(best_run)
        free[best_run.hardware] -= 1
        charge_by_team[best_run.team_id] = charge_by_team.get(best_run.team_id, 0.0) + max(1, gpus_of(best_run.hardware)) * expected_run_hours


# --- I/O ---------------------------------------------------------------------------------
def gpu_hours_used(session: Session, since: datetime, now: datetime) -> dict[int, float]:
    """GPU-hours per team of runs that ran inside [since, now]: gpus · overlap in hours."""
    rows = session.execute(
        select(Run.team_id, Run.hardware, Run.started_at, Run.finished_at).where(
            Run.started_at.is_not(None), (Run.finished_at.is_(None)) | (Run.finished_at >= since)
        )
    )
    used: dict[int, float] = {}
    for team_id, hardware, started, finished in rows:
        start = max(started, since)
        end = finished or now
        if end > start:
            used[team_id] = used.get(team_id, 0.0) + gpus_of(hardware) * (end - start).total_seconds() / 3600
    return used


def retry_wait(attempts: int, backoff_s: float) -> timedelta:
    """How long a run requeued for the attempts-th time waits: backoff_s · 2^(attempts-1)."""
    return timedelta(seconds=backoff_s * 2 ** max(0, attempts - 1)) if attempts > 0 else timedelta(0)


def _backing_off(session: Session, retried: list[tuple[int, int]], backoff_s: float, now: datetime) -> set[int]:
    """Ids of requeued runs still inside their retry wait (measured from their last return to the queue)."""
    if not retried or backoff_s <= 0:
        return set()
    attempts = dict(retried)
    last = session.execute(
        select(RunEvent.run_id, func.max(RunEvent.at)).where(RunEvent.run_id.in_(attempts), RunEvent.to_status == RunStatus.QUEUED.value).group_by(RunEvent.run_id)
    )
    return {run_id for run_id, at in last if at is not None and now - at < retry_wait(attempts[run_id], backoff_s)}


def _lock_dispatch(session: Session) -> None:
    # Two schedulers at once could both fill the same free slot; PostgreSQL
    # serialises them with a transaction-scoped advisory lock. (SQLite runs a
    # single control worker.)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7281)"))


def dispatch_due_runs(
    session: Session,
    *,
    capacity: Mapping[str, int],
    enqueue: Callable[[int], None],
    budget_period: timedelta = timedelta(days=30),
    expected_run_hours: float = 1 / 3,
    retry_backoff_s: float = 0.0,
    now: datetime | None = None,
) -> list[int]:
    """Pick runs with `pick_runs_to_start`, move each QUEUED -> PROVISIONING (committed),
    then call ``enqueue(run_id)``. Returns the ids dispatched.

    If enqueueing fails (broker down), the run stays PROVISIONING with a
    heartbeat from now; the janitor dispatches it again once that goes stale.
    """
    now = now or utcnow()
    _lock_dispatch(session)
    rows = list(
        session.execute(
            select(Run.id, Run.team_id, Run.hardware, Run.priority, Run.submitted_at, Run.attempts).where(Run.status == RunStatus.QUEUED.value)
        )
    )
    waiting = _backing_off(session, [(r.id, r.attempts) for r in rows if r.attempts], retry_backoff_s, now)
    queued = [QueuedRun(r.id, r.team_id, r.hardware, r.priority, r.submitted_at) for r in rows if r.id not in waiting]
    if not queued:
        session.rollback()
        return []
    running = [ActiveRun(r.id, r.team_id, r.hardware) for r in session.execute(select(Run.id, Run.team_id, Run.hardware).where(Run.status.in_(ACTIVE)))]
    used = gpu_hours_used(session, now - budget_period, now)
    usage = {
        t.id: TeamUsage(t.id, used.get(t.id, 0.0), t.weight, t.budget_gpu_hours)
        for t in session.scalars(select(Team).where(Team.id.in_({q.team_id for q in queued})))
    }
    picked = pick_runs_to_start(queued, running, usage, capacity, expected_run_hours=expected_run_hours)
    dispatched = []
    for run_id in picked:
        run = session.get(Run, run_id)
        if run is None:
            continue
        try:
            transition(session, run, RunStatus.PROVISIONING, actor=ACTOR, reason="dispatched to a worker")
        except IllegalTransition:
            continue  # cancelled meanwhile
        run.heartbeat_at = now  # the janitor measures a lost dispatch from here
        run.worker_task_id = dispatch_mark(now)  # a message is on its way (worker.lease)
        dispatched.append(run_id)
    session.commit()
    unsent = []
    for run_id in dispatched:
        try:
            enqueue(run_id)
        except Exception:  # noqa: BLE001 (any broker error: the janitor re-dispatches later)
            log.exception("could not enqueue run %s; the janitor will dispatch it again", run_id)
            unsent.append(run_id)
    if unsent:  # no message is on its way: the janitor sends one once the stale window has passed
        session.execute(
            update(Run).where(Run.id.in_(unsent), Run.worker_task_id == dispatch_mark(now)).values(worker_task_id=None),
            execution_options={"synchronize_session": False},
        )
        session.commit()
    return dispatched
