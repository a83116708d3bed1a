"""Cancelling a run: at once while QUEUED, else a request the worker acts on.

The answer says what happened (``outcome_of``): cancelled, requested (the worker stops
the job), or the run finished before the cancel took effect; a caller may wait a few
seconds for the worker (``await_outcome``) to learn which."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.core.db import rowcount
from service.core.errors import Conflict, Forbidden
from service.core.models import Run, utcnow
from service.core.status import IllegalTransition, RunStatus, is_terminal
from service.runs.lifecycle import transition
from service.runs.queries import get_run
from service.teams.tokens import Principal


def cancel_run(session: Session, principal: Principal, run_id: int) -> Run:
    """Cancel a run and commit. QUEUED runs are cancelled at once; for
    PROVISIONING/RUNNING runs a cancel request is recorded (cancel_requested_at)
    and the worker stops the job and makes the final transition. Finished runs: Conflict."""
    run = get_run(session, principal, run_id)
    # A member cancels their own runs; another member's run needs a team admin (it spends their time and budget).
    if run.user_id != principal.user_id and not principal.can_manage_team(run.team_id):
        raise Forbidden(f"run {run_id} was submitted by another member; only they or an admin of its team may cancel it")
    for _ in range(3):  # the run may move under us (dispatch); look again
        status = RunStatus(run.status)
        if is_terminal(status):
            raise Conflict(f"run {run_id} is already {status.value}")
        if status is RunStatus.QUEUED:
            try:
                transition(session, run, RunStatus.CANCELLED, actor=principal.actor, reason="cancelled by user")
            except IllegalTransition:
                session.rollback()
                session.refresh(run)
                continue
            session.commit()
            return run
        if run.cancel_requested_at is None:
            # Only while the run is still active: it may have finished since we
            # read it, and a finished run must answer Conflict, not a cancel request.
            requested = session.execute(
                update(Run)
                .where(Run.id == run.id, Run.status.in_((RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)))
                .values(cancel_requested_at=utcnow()),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            session.refresh(run)
            if rowcount(requested) != 1:
                continue
        return run
    raise Conflict(f"run {run_id} keeps changing state; try again")


class CancelOutcome(str, Enum):
    CANCELLED = "cancelled"  # the run is CANCELLED (at once while queued, or the worker stopped it)
    REQUESTED = "requested"  # still active: the worker stops the job when it sees the request
    FINISHED_FIRST = "finished_first"  # it ended otherwise (e.g. SUCCEEDED) before the cancel took effect

    def __str__(self) -> str:
        return self.value


def outcome_of(run: Run) -> tuple[CancelOutcome, str]:
    """What a cancel of ``run`` (as it stands now) came to, and a sentence that says it."""
    status = RunStatus(run.status)
    if status is RunStatus.CANCELLED:
        return CancelOutcome.CANCELLED, f"run {run.id} is cancelled"
    if is_terminal(status):
        return CancelOutcome.FINISHED_FIRST, f"run {run.id} ended {status.value} before the cancel took effect; what it stored is kept"
    return CancelOutcome.REQUESTED, (f"cancel requested while {status.value}: the worker stops the job "
                                     "(a run that has already written its result ends SUCCEEDED with it)")  # fmt: skip


def await_outcome(session: Session, run: Run, wait_s: float, *, poll_s: float = 0.1,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Run:  # fmt: skip
    """Re-read ``run`` until it is finished or ``wait_s`` has passed (the worker polls its job
    every CADDIE_POLL_INTERVAL_S, 0.2 s by default, and then stops it)."""
    deadline = clock() + wait_s
    while not is_terminal(RunStatus(run.status)) and clock() < deadline:
        sleep(poll_s)
        session.commit()  # end the read transaction: the next read sees the worker's commits
        session.refresh(run)
    return run
