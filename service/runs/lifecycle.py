"""The run state machine: the one place that says how a run's status may change.

    QUEUED ──▶ PROVISIONING ──▶ RUNNING ──▶ SUCCEEDED | FAILED | CANCELLED | ABORTED_BEHIND
       │            │              │
       │            └──────────────┴──▶ QUEUED   (retry: preemption, no capacity; attempts+1)
       └──▶ CANCELLED | FAILED

ABORTED_BEHIND: stopped early by its own abort_if_behind rule (service.runs.early_abort),
its train loss too far behind the team's best at the rule's step.

``check_transition`` is pure; ``transition`` applies a checked change to a
run inside the caller's transaction and writes its ``RunEvent`` there too.

What a run's end sets off elsewhere (the team's webhook: service.webhooks.outbox) listens here
(``on_run_ended``) and runs in the same transaction: the rooms that react to an end read the
runs room, so the runs room imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.core.db import rowcount
from service.core.models import Run, RunEvent, utcnow
from service.core.status import TERMINAL, IllegalTransition, RunStatus, check_transition, is_retry

RunEnded = Callable[[Session, Run], None]
_on_ended: list[RunEnded] = []


def on_run_ended(listener: RunEnded) -> RunEnded:
    """Call ``listener(session, run)`` in the transaction of every transition to a terminal
    status, after the run's row and event are written; the caller commits. A listener must not
    raise (a failure must cost its own work, never the run's final transition). Adding one
    twice adds it once; usable as a decorator."""
    if listener not in _on_ended:
        _on_ended.append(listener)
    return listener


def run_ended_listeners() -> tuple[RunEnded, ...]:
    return tuple(_on_ended)


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
    if rowcount(result) != 1:
        lost = f"run {run.id} is no longer {frm.value}" + (" or no longer driven by this worker" if owner is not None else "")
        raise IllegalTransition(frm, to, lost)
    for key, value in values.items():
        set_committed_value(run, key, value)
    event = RunEvent(run_id=run.id, at=now, from_status=frm.value, to_status=to.value, actor=actor, reason=reason)
    session.add(event)
    if to in TERMINAL:
        for listener in _on_ended:  # e.g. the team's webhook, queued in this transaction
            listener(session, run)
    return event


def record_created(session: Session, run: Run, *, actor: str, reason: str = "submitted") -> RunEvent:
    """The first event of a run (from_status is null). ``run.id`` must be assigned (flushed)."""
    event = RunEvent(run_id=run.id, at=run.submitted_at or utcnow(), from_status=None, to_status=run.status, actor=actor, reason=reason)
    session.add(event)
    return event
