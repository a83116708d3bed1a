"""Periodic clean-up: orphaned runs and forgotten clusters.

Decisions are pure (`decide_stale_runs`, `decide_clusters`); `janitor_pass`
gathers the facts from the database and the launcher and carries them out.

* A PROVISIONING/RUNNING run whose heartbeat is older than the stale window,
  or whose lease holder is a dead process of this host (``holder_gone``),
  lost its executor (worker killed, message lost with the broker). The janitor
  never changes its status: it frees the lease and dispatches the run again,
  and the executor that takes it (the run's one owner) decides: re-attach to
  the job, collect what finished, launch, requeue or fail. Each dispatch is a
  run event (actor "janitor").
* One message per run in flight: a dispatched run that no worker has taken
  yet is sent again only if the runs queue is empty (its message was lost with
  the broker), or after ``redispatch_resend_s`` whatever the queue holds, not
  once per stale window while no worker is up.
* A cluster that no active run uses and that has been idle longer than the
  keep-warm window (or that caddie never recorded) is torn down. Logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.billing.storage import recount_stalest
from service.core.db import rowcount
from service.core.models import Cluster, Run, RunEvent, utcnow
from service.core.status import RunStatus
from service.core.storage import ArtifactStore
from service.teams.tokens import prune_web_sessions
from service.webhooks.send import prune_deliveries
from worker.control.retention import retention_pass
from worker.launchers.base import ClusterHandle, Launcher, LauncherError
from worker.run.clusters import adopt_cluster, mark_down
from worker.run.lease import dispatch_mark, holder_gone, is_dispatch_mark

log = logging.getLogger(__name__)

ACTOR = "janitor"
RECOUNT_TEAMS = 3  # per round: at the 15 s beat (CADDIE_JANITOR_TICK_S) 720 teams an hour
ACTIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)


@dataclass(frozen=True)
class StaleRun:
    run_id: int
    silent_s: float  # seconds since the last heartbeat (for a dispatched run: since it was sent)
    has_job: bool  # a launch handle is stored
    dispatched: bool  # a message for it was sent and no executor has taken it yet
    holder_gone: bool = False  # its lease holder is a dead process of this host


@dataclass(frozen=True)
class RunAction:
    run_id: int
    action: str  # "redispatch"
    reason: str


@dataclass(frozen=True)
class ClusterFacts:
    name: str
    in_use: bool  # an active run uses it
    idle_since: datetime | None  # None: caddie has no record of it going idle
    recorded: bool  # caddie has a row for it


def decide_stale_runs(runs: Iterable[StaleRun], resend_after_s: float, queued_messages: int | None = None) -> list[RunAction]:
    """What to do with each run whose executor went silent: dispatch it again, unless a
    message for it is still waiting in the runs queue (``queued_messages`` > 0, or unknown:
    None) and was sent less than resend_after_s ago."""
    actions = []
    for r in runs:
        if r.dispatched:
            if r.silent_s < resend_after_s and queued_messages != 0:
                continue  # no worker took the last one yet; another would only pile up
            why = "the runs queue is empty (its message was lost)" if queued_messages == 0 else "not taken up by a worker"
            reason = f"dispatched {r.silent_s:.0f} s ago, {why}; dispatched again"
        elif r.holder_gone:
            reason = "its worker process is gone; dispatched again" + (" to re-attach to its job" if r.has_job else "")
        elif r.has_job:
            reason = f"no heartbeat for {r.silent_s:.0f} s; dispatched again to re-attach to its job"
        else:
            reason = f"no heartbeat for {r.silent_s:.0f} s and no job yet; dispatched again"
        actions.append(RunAction(r.run_id, "redispatch", reason))
    return actions


def decide_clusters(clusters: Iterable[ClusterFacts], now: datetime, keep_warm: timedelta) -> list[tuple[str, str]]:
    """(cluster name, reason) of each cluster to tear down."""
    out = []
    for c in clusters:
        if c.in_use:
            continue
        if not c.recorded:
            continue  # adopted first (idle from now), torn down after keep-warm if still unused
        if c.idle_since is None:
            out.append((c.name, "no active run uses it"))
        elif now - c.idle_since >= keep_warm:
            out.append((c.name, f"idle since {c.idle_since:%Y-%m-%d %H:%M:%S} UTC, longer than keep-warm {keep_warm}"))
    return out


# --- I/O -------------------------------------------------------------------------------------
def janitor_pass(
    session: Session,
    *,
    launcher: Launcher,
    settings: object,
    enqueue: Callable[[int], None],
    now: datetime | None = None,
    queued_messages: Callable[[], int | None] | None = None,
    store: ArtifactStore | None = None,
) -> list[RunAction]:
    """One janitor round over runs and clusters, and (given the artifact ``store``) retention;
    returns the run actions taken.

    ``queued_messages()``: how many messages wait in the runs queue (None: cannot tell).
    """
    actions = _stale_runs_pass(session, launcher, settings, enqueue, now or utcnow(), queued_messages)
    try:
        _clusters_pass(session, launcher, settings, now or utcnow())
    except LauncherError as exc:
        log.warning("janitor: cannot list clusters: %s", exc)
    if store is not None:
        runs_dir = getattr(settings, "runs_dir", None)
        retention_pass(session, store=store, runs_dir=Path(runs_dir) if runs_dir else None,
                       days=float(getattr(settings, "retention_days", 0)), now=now or utcnow())  # fmt: skip
    prune_deliveries(session, days=float(getattr(settings, "webhook_retention_days", 0)), now=now or utcnow())
    # Web sign-ins each make a session token; expired and revoked ones go (sign-out deletes its own).
    if prune_web_sessions(session, now=now or utcnow()):
        session.commit()
    # The quota's running totals are kept by their writers; a few teams a round are recounted so
    # a figure that drifted (a hand edit, a writer that bypassed them) is repaired within hours.
    recount_stalest(session, teams=RECOUNT_TEAMS, now=now)
    return actions


def _stale_runs_pass(
    session: Session, launcher: Launcher, settings: object, enqueue: Callable[[int], None], now: datetime, queued_messages: Callable[[], int | None] | None
) -> list[RunAction]:
    stale_before = now - timedelta(seconds=settings.heartbeat_s * settings.stale_heartbeats)  # type: ignore[attr-defined]
    rows = [
        run
        for run in session.scalars(select(Run).where(Run.status.in_(ACTIVE)))
        if run.heartbeat_at is None or run.heartbeat_at < stale_before or holder_gone(run.worker_task_id)
    ]
    facts = [
        StaleRun(
            run.id,
            (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else float("inf"),
            run.launch_handle is not None,
            is_dispatch_mark(run.worker_task_id),
            holder_gone(run.worker_task_id),
        )
        for run in rows
    ]
    waiting = queued_messages() if queued_messages is not None and any(f.dispatched for f in facts) else None
    actions = decide_stale_runs(facts, float(getattr(settings, "redispatch_resend_s", 300.0)), waiting)
    by_id = {r.id: r for r in rows}
    done = []
    for a in actions:
        run = by_id[a.run_id]
        # Free the lease (only if nobody touched the run since we looked: its
        # executor may have come back) and mark the message as in flight.
        mark = dispatch_mark(now)
        seen = Run.worker_task_id.is_(None) if run.worker_task_id is None else Run.worker_task_id == run.worker_task_id
        beat = Run.heartbeat_at.is_(None) if run.heartbeat_at is None else Run.heartbeat_at == run.heartbeat_at
        result = session.execute(
            update(Run).where(Run.id == run.id, Run.status == run.status, seen, beat).values(worker_task_id=mark, heartbeat_at=now),
            execution_options={"synchronize_session": False},
        )
        if rowcount(result) != 1:
            session.rollback()
            continue
        session.add(RunEvent(run_id=run.id, at=now, from_status=run.status, to_status=run.status, actor=ACTOR, reason=a.reason))
        session.commit()
        try:
            enqueue(run.id)
        except Exception:  # noqa: BLE001 (broker down: no message is in flight, the next round tries again)
            log.exception("janitor: could not enqueue run %s", run.id)
            session.execute(
                update(Run).where(Run.id == run.id, Run.worker_task_id == mark).values(worker_task_id=None, heartbeat_at=None),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            continue
        done.append(a)
        log.info("janitor: run %s: %s (%s)", a.run_id, a.action, a.reason)
    return done


def _clusters_pass(session: Session, launcher: Launcher, settings: object, now: datetime) -> None:
    if launcher.name == "local":
        return  # this machine is never torn down
    live = {c.name: c for c in launcher.list_clusters()}
    rows = {c.name: c for c in session.scalars(select(Cluster).where(Cluster.launcher == launcher.name))}
    in_use_ids = set(session.scalars(select(Run.cluster_id).where(Run.status.in_(ACTIVE), Run.cluster_id.is_not(None))))
    for name, handle in live.items():
        if name not in rows:  # started outside caddie's records (or its row was lost): adopt it as idle from now
            rows[name] = adopt_cluster(session, launcher.name, handle, now)
            log.info("janitor: found cluster %s that caddie had no record of; tearing it down if still unused after keep-warm", name)
    session.commit()
    facts = [ClusterFacts(name, rows[name].id in in_use_ids, rows[name].idle_since, True) for name in live]
    keep_warm = timedelta(minutes=settings.keep_warm_minutes)  # type: ignore[attr-defined]
    for name, reason in decide_clusters(facts, now, keep_warm):
        try:
            stored = rows[name].handle
            launcher.release(ClusterHandle.from_json(stored) if stored else live[name], keep_warm=False)
        except LauncherError as exc:
            log.warning("janitor: tearing down cluster %s failed: %s", name, exc)
            continue
        mark_down(rows[name])
        session.commit()
        log.info("janitor: tore down cluster %s: %s", name, reason)
