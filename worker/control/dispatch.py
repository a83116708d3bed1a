"""Dispatch: start the runs the scheduling policy picks.

The policy itself is pure and lives in the service (``service.queue.policy``:
weighted fair share between teams, within budgets and capacity), so the API's
queue forecasts (``service.queue.forecast``) play forward the very rule
used here. ``dispatch_due_runs`` reads the facts (``service.queue.state``:
queued runs with their expected time, runs holding slots, each team's billed
GPU-hours as service.billing.accounting measures them), calls the policy, marks the
picked runs dispatched (QUEUED -> PROVISIONING, so the next tick does not pick
them again) and enqueues them. A run sent back to the queue (no capacity,
preemption) waits retry_backoff_s · 2^(attempts-1) before it is picked again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.core.hardware import gpus_of, parse_capacity, slots_of  # noqa: F401 (re-exported)
from service.core.models import Run, utcnow
from service.core.settings import Settings
from service.core.status import IllegalTransition, RunStatus
from service.queue.policy import ActiveRun, QueuedRun, TeamUsage, pick_runs_to_start  # noqa: F401 (re-exported)
from service.queue.state import load_queue_state, retry_wait  # noqa: F401 (re-exported)
from service.runs.lifecycle import transition
from worker.run.lease import dispatch_mark

log = logging.getLogger(__name__)

ACTOR = "scheduler"
ACTIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)
DEFAULTS = Settings.model_construct()  # the fields' defaults, not the environment


def _lock_dispatch(session: Session) -> None:
    # Two schedulers at once could both fill the same free slot; PostgreSQL
    # serialises them with a transaction-scoped advisory lock. (SQLite runs a
    # single control worker.)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7281)"))


# The distinct hardware of the queued runs by a skip scan of ix_runs_status_hardware: one index probe per
# kind (a handful), where SELECT DISTINCT reads every queued run (32 ms at 50,000 in PostgreSQL; 0.3 ms so).
# SQLite runs it as written too.
QUEUED_HARDWARE = text("""
WITH RECURSIVE kinds(hardware) AS (
    SELECT (SELECT hardware FROM runs WHERE status = :queued ORDER BY hardware LIMIT 1)
    UNION ALL
    SELECT (SELECT hardware FROM runs WHERE status = :queued AND hardware > kinds.hardware ORDER BY hardware LIMIT 1)
    FROM kinds WHERE kinds.hardware IS NOT NULL
)
SELECT hardware FROM kinds WHERE hardware IS NOT NULL
""")


def queued_hardware(session: Session) -> list[str]:
    """Each hardware some queued run asks for, once."""
    return list(session.scalars(QUEUED_HARDWARE, {"queued": RunStatus.QUEUED.value}).all())


def _any_free_slot(session: Session, capacity: Mapping[str, int]) -> bool:
    """Whether some hardware that a queued run asks for has a slot free."""
    wanted = queued_hardware(session)
    if not wanted:
        return False
    busy = dict(session.execute(select(Run.hardware, func.count()).where(Run.status.in_(ACTIVE)).group_by(Run.hardware)).all())
    return any(slots_of(hardware, capacity) - busy.get(hardware, 0) > 0 for hardware in wanted)


def dispatch_due_runs(
    session: Session,
    *,
    capacity: Mapping[str, int],
    enqueue: Callable[[int], None],
    budget_period: timedelta = timedelta(days=DEFAULTS.budget_period_days),
    expected_run_hours: float = DEFAULTS.expected_run_hours,
    retry_backoff_s: float = 0.0,
    run_overhead_s: float = DEFAULTS.run_overhead_s,
    now: datetime | None = None,
) -> list[int]:
    """Pick runs with `pick_runs_to_start`, move each QUEUED -> PROVISIONING (committed),
    then call ``enqueue(run_id)``. Returns the ids dispatched.

    If enqueueing fails (broker down), the run stays PROVISIONING with a
    heartbeat from now; the janitor dispatches it again once that goes stale.
    """
    now = now or utcnow()
    _lock_dispatch(session)
    if not _any_free_slot(session, capacity):  # two small counts, not the whole queue and its billing
        session.rollback()
        return []
    state = load_queue_state(session, now=now, budget_period=budget_period, retry_backoff_s=retry_backoff_s, run_overhead_s=run_overhead_s)
    queued = state.ready(now)
    if not queued:
        session.rollback()
        return []
    picked = pick_runs_to_start(queued, state.running, state.usage, capacity, expected_run_hours=expected_run_hours)
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
        run.worker_task_id = dispatch_mark(now)  # a message is on its way (worker.run.lease)
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


class TickGate:
    """Coalesces ticks across processes, where they run. Each requested tick carries the wall-clock
    time it was asked for; a tick that started after that time has already seen whatever the request
    was about (a run submitted, a slot freed), so the request's own tick is skipped for the cost of a
    comparison. TickDebounce keeps each API process to one tick per window; this keeps N processes'
    windows from costing N full ticks. One control worker runs the ticks, one at a time (``-P solo``,
    "exactly one of these" in docker-compose.yml), so this process's memory is the only state needed.
    Clocks are assumed in step (NTP): a request from a host whose clock is behind may be skipped, and
    then waits for beat's next tick (``CADDIE_SCHEDULE_TICK_S``), as it would without the hook.
    Beat's own ticks carry no time and always run.
    """

    def __init__(self) -> None:
        self.last_started = float("-inf")
        self._lock = threading.Lock()

    def admit(self, requested_at: float | None, now: float) -> bool:
        """Whether a tick asked for at ``requested_at`` must run now; if so, it counts as started at ``now``."""
        with self._lock:
            if requested_at is not None and requested_at < self.last_started:
                return False
            self.last_started = max(self.last_started, now)
            return True

    def forget(self) -> None:
        """A tick failed: it covered nothing, so every request runs until one succeeds."""
        with self._lock:
            self.last_started = float("-inf")


class TickDebounce:
    """Coalesces tick requests: at most one tick per ``window_s``, each as soon as it may run. A request
    with no tick pending sends one now (a freed slot is filled at once) or, within ``window_s`` of the
    last one, at the end of that window; a request while a tick is pending sends nothing, since that
    tick runs after it and sees its runs. A burst of 1,000 submits costs one tick per window per
    process instead of 1,000 (which queued for minutes and made the janitor's ticks expire).
    """

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._due = float("-inf")  # when the last tick sent runs
        self._lock = threading.Lock()

    def request(self, send: Callable[[float], None]) -> bool:
        """Call ``send(countdown_s)`` unless a tick is already pending; True if one was sent."""
        with self._lock:
            now = self._clock()
            if now <= self._due:
                return False
            before, self._due = self._due, max(now, self._due + self.window_s)
            countdown = self._due - now
        try:
            send(countdown)
        except Exception:
            with self._lock:
                self._due = before  # not sent: the next request tries again
            raise
        return True
