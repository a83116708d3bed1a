"""A run's node: get one from the launcher and claim it in the DB, find it again, release it.

A warm cluster is one run's at a time: a claim locks the cluster's row and takes it
only if no other active run owns or uses it. Releasing marks it IDLE (kept warm) or
DOWN once no other active run is on it; the janitor tears down what is left, through
``adopt_cluster`` and ``mark_down`` here: this module is the one writer of cluster rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.models import Cluster, Run, utcnow
from service.core.status import ClusterStatus
from worker.launchers.base import ClusterHandle, Launcher, RetryLater
from worker.run.lease import ACTIVE, with_db_retry

log = logging.getLogger(__name__)
T = TypeVar("T")


def adopt_cluster(session: Session, launcher: str, handle: ClusterHandle, now: datetime) -> Cluster:
    """Record a live cluster that caddie had no row for (started outside it, or its row was
    lost) as idle from ``now``, so the keep-warm rule tears it down if nothing uses it."""
    row = Cluster(name=handle.name, launcher=launcher, hardware=handle.hardware, status=ClusterStatus.IDLE.value,
                  handle=handle.to_json(), created_at=now, idle_since=now)
    session.add(row)
    return row


def mark_down(row: Cluster) -> None:
    """The janitor tore the cluster down (caller commits)."""
    row.status = ClusterStatus.DOWN.value


def cluster_of(session: Session, run: Run) -> ClusterHandle | None:
    """The cluster recorded as the run's, if any."""
    if run.cluster_id is None:
        return None
    row = session.get(Cluster, run.cluster_id)
    return ClusterHandle.from_json(row.handle) if row is not None and row.handle else None


def is_reused(cluster: ClusterHandle) -> bool:
    """The launcher offered a cluster kept warm by an earlier run (no provisioning), not a new one."""
    return bool(cluster.data.get("reused"))


class RunClusters:
    """The cluster side of one run's executor (every DB step retried through transient errors)."""

    def __init__(self, run_id: int, launcher: Launcher, session_factory: Callable[[], Session], *, retry_s: float, keep_warm: bool) -> None:
        self.run_id = run_id
        self.launcher = launcher
        self.session_factory = session_factory
        self.retry_s = retry_s
        self.keep_warm = keep_warm  # a released cluster stays up for the next run (its launcher's autostop still guards it)

    def _db(self, fn: Callable[[], T], what: str) -> T:
        return with_db_retry(fn, what=f"run {self.run_id}: {what}", deadline_s=self.retry_s)

    def acquire(self, hardware: str) -> ClusterHandle:
        """A node from the launcher, claimed in the DB. If another run claimed it first,
        ask the launcher again without it."""
        taken: list[str] = []
        team_id = self._db(self._team_id, "read its team")  # a warm node serves only the team that warmed it
        for _ in range(3):
            cluster = self.launcher.acquire(self.run_id, hardware, exclude=tuple(taken), team_id=team_id)
            if self._db(lambda: self.claim(cluster), "claim its cluster"):
                return cluster
            log.info("run %s: cluster %s was claimed by another run meanwhile", self.run_id, cluster.name)
            taken.append(cluster.name)
        raise RetryLater(f"every warm cluster offered ({', '.join(taken)}) was claimed by another run meanwhile")

    def _team_id(self) -> int | None:
        with self.session_factory() as session:
            run = session.get(Run, self.run_id)
            return run.team_id if run is not None else None

    def claim(self, cluster: ClusterHandle) -> bool:
        """Record `cluster` as this run's, in one commit with runs.cluster_id.

        A reused (warm) cluster is a claim: its row is locked (SELECT ... FOR UPDATE),
        then taken only if no other active run owns or uses it. Two runs that saw
        the same idle cluster queue on the lock, and the second sees the first's
        claim. False: another run has it.
        """
        exclusive = is_reused(cluster)
        for _ in range(3):  # two runs may record the same new cluster at once
            now = utcnow()
            with self.session_factory() as session:
                row = session.scalar(select(Cluster).where(Cluster.name == cluster.name).with_for_update())
                if row is None:
                    row = Cluster(name=cluster.name, launcher=cluster.launcher, hardware=cluster.hardware, status=ClusterStatus.UP.value, created_at=now)
                    session.add(row)
                    try:
                        session.flush()
                    except IntegrityError:
                        session.rollback()
                        continue
                elif exclusive:
                    # A statement after the lock: it sees what the run that held the lock committed.
                    busy = session.scalar(
                        select(Run.id)
                        .where(Run.id != self.run_id, Run.status.in_(ACTIVE), (Run.id == row.owner_run_id) | (Run.cluster_id == row.id))
                        .limit(1)
                    )
                    if busy is not None:
                        session.rollback()
                        return False
                row.status, row.handle, row.owner_run_id = ClusterStatus.UP.value, cluster.to_json(), self.run_id
                row.last_used_at, row.idle_since = now, None
                session.flush()
                session.execute(update(Run).where(Run.id == self.run_id).values(cluster_id=row.id), execution_options={"synchronize_session": False})
                session.commit()
                return True
        raise RuntimeError(f"could not record cluster {cluster.name!r}")

    def release(self, cluster: ClusterHandle | None, *, never_up: bool = False, lost: bool = False) -> None:
        """Give the run's cluster back: kept warm (IDLE) or DOWN.

        never_up: the launch that was to bring it up failed. A new cluster is then torn
        down and its row deleted (nothing is kept warm that never ran a job); a reused
        warm one is released as usual.
        lost: the node died under its job (preemption, hardware). What is left of it is torn
        down at once, never kept warm: the next attempt gets a fresh node, and a stopped spot
        node's disks are not paid for while nobody can use them.
        """
        if cluster is None:
            return
        if never_up and not is_reused(cluster):
            self._forget(cluster)
            return
        keep_warm = self.keep_warm and not lost
        try:
            self.launcher.release(cluster, keep_warm=keep_warm)
        except Exception as exc:  # noqa: BLE001 (the janitor tears down what is left)
            log.warning("run %s: releasing %s failed: %s", self.run_id, cluster.name, exc)

        def write() -> None:
            now = utcnow()
            with self.session_factory() as session:
                row = session.scalar(select(Cluster).where(Cluster.name == cluster.name))
                if row is None:
                    return
                others = session.scalar(
                    select(Run.id).where(Run.cluster_id == row.id, Run.id != self.run_id, Run.status.in_(ACTIVE)).limit(1)
                )
                row.last_used_at = now
                if row.owner_run_id == self.run_id:
                    row.owner_run_id = None
                if others is None:
                    row.status = (ClusterStatus.IDLE if keep_warm else ClusterStatus.DOWN).value
                    row.idle_since = now
                session.commit()

        self._db(write, "release its cluster")

    def _forget(self, cluster: ClusterHandle) -> None:
        try:
            self.launcher.release(cluster, keep_warm=False)  # whatever a failed launch left up
        except Exception as exc:  # noqa: BLE001 (the janitor tears down what is left)
            log.warning("run %s: tearing down %s failed: %s", self.run_id, cluster.name, exc)

        def write() -> None:
            with self.session_factory() as session:
                row = session.scalar(select(Cluster).where(Cluster.name == cluster.name).with_for_update())
                if row is None:
                    return
                others = session.scalar(select(Run.id).where(Run.cluster_id == row.id, Run.id != self.run_id, Run.status.in_(ACTIVE)).limit(1))
                if others is not None:
                    return
                session.execute(update(Run).where(Run.cluster_id == row.id).values(cluster_id=None), execution_options={"synchronize_session": False})
                session.execute(delete(Cluster).where(Cluster.id == row.id))
                session.commit()

        self._db(write, "forget its cluster")
