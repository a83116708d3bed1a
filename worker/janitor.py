"""Periodic clean-up: orphaned runs and forgotten clusters.

Decisions are pure (`decide_stale_runs`, `decide_clusters`); `janitor_pass`
gathers the facts from the database and the launcher and carries them out.

* A PROVISIONING/RUNNING run whose heartbeat is older than the stale window
  lost its executor (worker killed, message lost with the broker). If its job
  is still there (running, or ended but not yet collected) or it never got a
  job, it is dispatched again: the new executor takes over the lease and
  re-attaches. If the launcher says the job is gone without a trace, the run
  goes back to the queue (or fails once out of attempts). Each action is a
  run event (actor "janitor").
* A cluster that no active run uses and that has been idle longer than the
  keep-warm window (or that caddie never recorded) is torn down. Logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.lifecycle import IllegalTransition, RunStatus, transition
from service.models import Cluster, LogChunk, Metric, Run, RunEvent, utcnow
from worker.launchers.base import ClusterHandle, JobState, LaunchHandle, Launcher, LauncherError

log = logging.getLogger(__name__)

ACTOR = "janitor"
ACTIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)


@dataclass(frozen=True)
class StaleRun:
    run_id: int
    status: str
    attempts: int
    has_job: bool  # a launch handle is stored
    job_state: JobState | None  # what the launcher says about the job; None: could not ask / no job
    silent_s: float  # seconds since the last heartbeat


@dataclass(frozen=True)
class RunAction:
    run_id: int
    action: str  # "redispatch" | "requeue" | "fail"
    reason: str


@dataclass(frozen=True)
class ClusterFacts:
    name: str
    in_use: bool  # an active run uses it
    idle_since: datetime | None  # None: caddie has no record of it going idle
    recorded: bool  # caddie has a row for it


def decide_stale_runs(runs: Iterable[StaleRun], max_attempts: int) -> list[RunAction]:
    """What to do with each run whose executor went silent."""
    actions = []
    for r in runs:
        silent = f"no heartbeat for {r.silent_s:.0f} s"
        if not r.has_job:
            actions.append(RunAction(r.run_id, "redispatch", f"{silent} and no job yet; dispatched again"))
        elif r.job_state is None:
            continue  # the launcher could not be asked: decide next time
        elif r.job_state is JobState.LOST:
            if r.attempts + 1 >= max_attempts:
                actions.append(RunAction(r.run_id, "fail", f"{silent}; the job is gone; gave up after {r.attempts + 1} attempts"))
            else:
                actions.append(RunAction(r.run_id, "requeue", f"{silent}; the job is gone; queued again"))
        else:
            actions.append(RunAction(r.run_id, "redispatch", f"{silent}; job is {r.job_state.value}; dispatched again to re-attach"))
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
def janitor_pass(session: Session, *, launcher: Launcher, settings: object, enqueue: Callable[[int], None], now: datetime | None = None) -> list[RunAction]:
    """One janitor round over runs and clusters; returns the run actions taken."""
    actions = _stale_runs_pass(session, launcher, settings, enqueue, now or utcnow())
    try:
        _clusters_pass(session, launcher, settings, now or utcnow())
    except LauncherError as exc:
        log.warning("janitor: cannot list clusters: %s", exc)
    return actions


def _stale_runs_pass(session: Session, launcher: Launcher, settings: object, enqueue: Callable[[int], None], now: datetime) -> list[RunAction]:
    stale_before = now - timedelta(seconds=settings.heartbeat_s * settings.stale_heartbeats)  # type: ignore[attr-defined]
    rows = list(session.scalars(select(Run).where(Run.status.in_(ACTIVE), (Run.heartbeat_at.is_(None)) | (Run.heartbeat_at < stale_before))))
    facts = []
    for run in rows:
        state = None
        if run.launch_handle:
            try:
                state = launcher.status(LaunchHandle.from_json(run.launch_handle)).state
            except LauncherError as exc:
                log.warning("janitor: status of run %s unknown: %s", run.id, exc)
        silent = (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else float("inf")
        facts.append(StaleRun(run.id, run.status, run.attempts or 0, run.launch_handle is not None, state, silent))
    actions = decide_stale_runs(facts, settings.max_attempts)  # type: ignore[attr-defined]
    by_id = {r.id: r for r in rows}
    done = []
    for a in actions:
        run = by_id[a.run_id]
        if a.action == "redispatch":
            # Free the lease (only if still stale: the executor may have come back)
            # and restart the clock, so the next round waits for the new executor.
            result = session.execute(
                update(Run)
                .where(Run.id == run.id, Run.status == run.status, (Run.heartbeat_at.is_(None)) | (Run.heartbeat_at < stale_before))
                .values(worker_task_id=None, heartbeat_at=now),
                execution_options={"synchronize_session": False},
            )
            if result.rowcount != 1:
                session.rollback()
                continue
            session.add(RunEvent(run_id=run.id, at=now, from_status=run.status, to_status=run.status, actor=ACTOR, reason=a.reason))
            session.commit()
            try:
                enqueue(run.id)
            except Exception:  # noqa: BLE001 (broker down: the next round tries again)
                log.exception("janitor: could not enqueue run %s", run.id)
        else:
            to = RunStatus.QUEUED if a.action == "requeue" else RunStatus.FAILED
            try:
                transition(session, run, to, actor=ACTOR, reason=a.reason)
            except IllegalTransition:
                session.rollback()
                continue
            if to is RunStatus.QUEUED:
                run.launch_handle, run.cluster_id, run.worker_task_id, run.log_bytes = None, None, None, 0
                session.execute(delete(LogChunk).where(LogChunk.run_id == run.id))
                session.execute(delete(Metric).where(Metric.run_id == run.id))
            session.commit()
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
            row = Cluster(name=name, launcher=launcher.name, hardware=handle.hardware, status="IDLE", handle=handle.to_json(), created_at=now, idle_since=now)
            session.add(row)
            rows[name] = row
            log.info("janitor: found cluster %s that caddie had no record of; tearing it down if still unused after keep-warm", name)
    session.commit()
    facts = [ClusterFacts(name, rows[name].id in in_use_ids, rows[name].idle_since, True) for name in live]
    keep_warm = timedelta(minutes=settings.keep_warm_minutes)  # type: ignore[attr-defined]
    for name, reason in decide_clusters(facts, now, keep_warm):
        try:
            launcher.release(ClusterHandle.from_json(rows[name].handle) if rows[name].handle else live[name], keep_warm=False)
        except LauncherError as exc:
            log.warning("janitor: tearing down cluster %s failed: %s", name, exc)
            continue
        rows[name].status = "DOWN"
        session.commit()
        log.info("janitor: tore down cluster %s: %s", name, reason)
