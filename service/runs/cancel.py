"""Cancelling a run: at once while QUEUED, else a request the worker acts on."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.core.errors import Conflict, Forbidden
from service.core.models import Run, utcnow
from service.runs.lifecycle import transition
from service.runs.queries import get_run
from service.runs.status import IllegalTransition, RunStatus, is_terminal
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
            if requested.rowcount != 1:
                continue
        return run
    raise Conflict(f"run {run_id} keeps changing state; try again")
