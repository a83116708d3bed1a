"""The run state machine: the one place that says how a run's status may change.

    QUEUED ──▶ PROVISIONING ──▶ RUNNING ──▶ SUCCEEDED | FAILED | CANCELLED | ABORTED_BEHIND
       │            │              │
       │            └──────────────┴──▶ QUEUED   (retry: preemption, no capacity; attempts+1)
       └──▶ CANCELLED | FAILED

ABORTED_BEHIND: stopped early by its own abort_if_behind rule (service.runs.early_abort),
its train loss too far behind the team's best at the rule's step.

``check_transition`` is pure; ``transition`` applies a checked change to a
run inside the caller's transaction and writes its ``RunEvent`` there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.core.models import Run, RunEvent, utcnow


class RunStatus(str, Enum):
    QUEUED = "QUEUED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    ABORTED_BEHIND = "ABORTED_BEHIND"

    def __str__(self) -> str:
        return self.value


TERMINAL: frozenset[RunStatus] = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.ABORTED_BEHIND})

ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.PROVISIONING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.PROVISIONING: frozenset({RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUEUED, RunStatus.ABORTED_BEHIND}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.ABORTED_BEHIND: frozenset(),
}


class IllegalTransition(Exception):
    """A status change the state machine does not allow (or a lost race for it)."""

    def __init__(self, frm: str, to: str, detail: str = ""):
        self.frm, self.to = str(frm), str(to)
        super().__init__(detail or f"cannot go from {self.frm} to {self.to}")


def is_terminal(status: str) -> bool:
    return RunStatus(status) in TERMINAL


def is_retry(frm: str, to: str) -> bool:
    """Back to the queue after the run had left it (preemption, capacity error)."""
    return RunStatus(to) is RunStatus.QUEUED and RunStatus(frm) in (RunStatus.PROVISIONING, RunStatus.RUNNING)


def check_transition(frm: str, to: str) -> None:
    """Raise IllegalTransition unless ``frm -> to`` is an allowed edge."""
    try:
        f, t = RunStatus(frm), RunStatus(to)
    except ValueError as exc:
        raise IllegalTransition(frm, to, f"unknown status: {exc}") from None
    if t not in ALLOWED[f]:
        raise IllegalTransition(f, t)


def transition(
    session: Session,
    run: Run,
    to: str,
    *,
    actor: str,
    reason: str = "",
    owner: str | None = None,
    also: Mapping[str, object] | None = None,
) -> RunEvent:
    """Move ``run`` to ``to`` and add the RunEvent, in the caller's transaction.

    The UPDATE is guarded by the status the caller saw (``WHERE status = :from``),
    so two processes racing on one run (a cancel against the scheduler's
    dispatch) cannot both win: the loser gets IllegalTransition. The caller commits.

    ``owner``: the lease token of the executor driving the run; the UPDATE also
    requires ``worker_task_id = owner``, so an executor that lost its lease
    moves nothing. ``also``: more columns written by the same UPDATE (the launch
    handle with PROVISIONING -> RUNNING), so what was learnt and the state it
    implies are one commit.
    """
    frm = RunStatus(run.status)
    to = RunStatus(to)
    check_transition(frm, to)
    now = utcnow()
    values: dict[str, object] = {**(also or {}), "status": to.value, "status_reason": reason}
    if to is RunStatus.RUNNING:
        values["started_at"] = now
        values["heartbeat_at"] = now
    if to in TERMINAL:
        values["finished_at"] = now
    if is_retry(frm, to):
        values["attempts"] = (run.attempts or 0) + 1
        values["started_at"] = None
    guard = [Run.id == run.id, Run.status == frm.value]
    if owner is not None:
        guard.append(Run.worker_task_id == owner)
    result = session.execute(update(Run).where(*guard).values(**values), execution_options={"synchronize_session": False})
    if result.rowcount != 1:
        lost = f"run {run.id} is no longer {frm.value}" + (" or no longer driven by this worker" if owner is not None else "")
        raise IllegalTransition(frm, to, lost)
    for key, value in values.items():
        set_committed_value(run, key, value)
    event = RunEvent(run_id=run.id, at=now, from_status=frm.value, to_status=to.value, actor=actor, reason=reason)
    session.add(event)
    return event


def record_created(session: Session, run: Run, *, actor: str, reason: str = "submitted") -> RunEvent:
    """The first event of a run (from_status is null). ``run.id`` must be assigned (flushed)."""
    event = RunEvent(run_id=run.id, at=run.submitted_at or utcnow(), from_status=None, to_status=run.status, actor=actor, reason=reason)
    session.add(event)
    return event
