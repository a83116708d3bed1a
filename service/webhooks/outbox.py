"""Queue the notifications of an event in the event's own transaction (``webhook_deliveries``).

Called by ``service.runs.lifecycle.transition`` when a run ends (``notify_run_ended`` listens
there from this module's import on: the API and the worker import it) and by the sweep tick
when a sweep is done. The rows are sent later by the control worker (send.py), so a slow or dead
endpoint never holds a run. Queuing runs in a SAVEPOINT and swallows its own errors: a failure
here costs a notification, never the run's final transition. A team with no webhook costs one
SELECT.

Runs a sweep submitted tell nothing of their own (the sweep's end does; a busy sweep would flood
a channel), except that their group becoming record-eligible is always told. A cancelled run
tells nothing (whoever cancelled it knows). Group events come only for groups of two runs or more
(a one-seed group's run already told).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.models import Run, RunGroup, Sweep, SweepTrial, Team, WebhookDelivery, utcnow
from service.core.settings import get_settings
from service.core.status import TERMINAL_VALUES, RunStatus
from service.results import queries
from service.runs.lifecycle import on_run_ended
from service.teams.tokens import Principal
from service.webhooks import body as bodies
from service.webhooks.body import Notice

log = logging.getLogger(__name__)

SWEEP_RUN_KEY_PREFIX = "sweep:"  # the idempotency key of a sweep's runs (service.sweeps.store)
SWEEP_COMPLETE = "complete"  # a trial that measured its value (service.sweeps.plan.COMPLETE)


@on_run_ended
def notify_run_ended(session: Session, run: Run) -> None:
    """Queue what ``run`` reaching its terminal status tells: the run's own end, its group's end,
    its group becoming record-eligible. In the caller's transaction; the caller commits."""
    team = _team_with_webhook(session, run.team_id)
    if team is not None:
        _guarded(session, lambda: _run_ended(session, team, run), f"run {run.id}")
        _guarded(session, lambda: _group_of_run(session, team, run), f"the group of run {run.id}")


def notify_sweep_ended(session: Session, sweep: Sweep) -> None:
    """Queue the end of ``sweep`` (done): finished with its best trial, or failed with none complete."""
    team = _team_with_webhook(session, sweep.team_id)
    if team is not None:
        _guarded(session, lambda: _sweep_ended(session, team, sweep), f"sweep {sweep.id}")


def _team_with_webhook(session: Session, team_id: int) -> Team | None:
    team = session.scalar(select(Team).where(Team.id == team_id, Team.webhook_url.is_not(None)))
    if team is not None:
        session.flush()  # the caller's own changes fail (or not) outside our savepoints
    return team


def _guarded(session: Session, queue: Callable[[], None], what: str) -> None:
    """``queue`` in a SAVEPOINT: if it fails, what it wrote goes and the caller's transaction goes on."""
    try:
        with session.begin_nested():
            queue()
    except Exception:  # noqa: BLE001 (a lost notification, never a lost transition)
        log.warning("webhooks: could not queue the notifications of %s", what, exc_info=True)


def _queue(session: Session, team: Team, notice: Notice, dedupe_key: str | None = None) -> None:
    row = WebhookDelivery(team_id=team.id, event=notice.event, dedupe_key=dedupe_key, body=bodies.body_of(notice, get_settings().public_url),
                          status="pending", attempts=0, next_attempt_at=utcnow(), last_error="")  # fmt: skip
    if dedupe_key is None:
        session.add(row)
        return
    if session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.dedupe_key == dedupe_key)) is not None:
        return
    try:
        with session.begin_nested():  # another process may queue the same once-only event at the same time
            session.add(row)
    except IntegrityError:
        pass


def _run_ended(session: Session, team: Team, run: Run) -> None:
    status = RunStatus(run.status)
    in_sweep = (run.idempotency_key or "").startswith(SWEEP_RUN_KEY_PREFIX)
    if not in_sweep and status is not RunStatus.CANCELLED:
        event = bodies.RUN_FAILED if status is RunStatus.FAILED else bodies.RUN_FINISHED
        _queue(session, team, Notice(event, team.name, "run", str(run.id), run.name, status.value, run.val_bpb, run.status_reason, f"/runs/{run.id}"))


def _group_of_run(session: Session, team: Team, run: Run) -> None:
    in_sweep = (run.idempotency_key or "").startswith(SWEEP_RUN_KEY_PREFIX)
    # Two runs of one group ending at once would each see the other still running, and neither
    # would tell the group's end: the group's row, locked till commit, puts them one after the
    # other (PostgreSQL; SQLite has one writer at a time anyway).
    session.execute(select(RunGroup.key).where(RunGroup.key == run.group_key).with_for_update())
    runs = session.execute(select(func.count(), func.count(case((Run.status.not_in(TERMINAL_VALUES), 1))))
                           .where(Run.group_key == run.group_key, Run.team_id == run.team_id)).one()  # fmt: skip
    total, open_runs = runs
    if open_runs:
        return
    _group_ended(session, team, run, total, in_sweep)


def _group_ended(session: Session, team: Team, run: Run, total: int, in_sweep: bool) -> None:
    # The group's own team as the reader: its baseline is what that team's group page shows.
    reader = Principal(user_id=0, name="caddie", is_admin=False, roles={team.id: "member"}, team_names={team.id: team.name})
    report = queries.group_report(session, reader, run.group_key)
    group, stats = report.view.group, report.view.stats
    mean = stats.val_bpb.mean if stats.n else None
    path = f"/groups/{group.key}"
    if report.eligibility.eligible:
        against = report.baseline.group.name if report.baseline is not None else "its baseline"
        notice = Notice(bodies.GROUP_RECORD_ELIGIBLE, team.name, "group", group.key, group.name, "record-eligible", mean,
                        f"{stats.n} seeds, significant against {against}", path)
        _queue(session, team, notice, dedupe_key=f"group:{group.key}:record_eligible")
    if in_sweep or total < 2:
        return
    if stats.n == 0:
        notice = Notice(bodies.GROUP_FAILED, team.name, "group", group.key, group.name, "failed", None, f"none of its {total} runs succeeded", path)
    else:
        verdict = "record-eligible" if report.eligibility.eligible else "not record-eligible"
        why = "" if report.eligibility.eligible else "; ".join(report.eligibility.reasons)
        notice = Notice(bodies.GROUP_FINISHED, team.name, "group", group.key, group.name, verdict, mean, f"{stats.n} of {total} runs counted" + (f"; {why}" if why else ""), path)
    _queue(session, team, notice)


def _sweep_ended(session: Session, team: Team, sweep: Sweep) -> None:
    best = session.scalar(select(func.min(SweepTrial.value)).where(SweepTrial.sweep_id == sweep.id, SweepTrial.status == SWEEP_COMPLETE))
    event = bodies.SWEEP_FAILED if best is None else bodies.SWEEP_FINISHED
    status = "failed" if best is None else sweep.status
    _queue(session, team, Notice(event, team.name, "sweep", str(sweep.id), sweep.name, status, best, sweep.status_reason, f"/sweeps/{sweep.id}"))
