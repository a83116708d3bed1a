"""Drive one run through a launcher, from dispatch to its final state.

    claim the lease ─▶ launch: acquire (and claim) a node, submit the trainer job,
    then the job's handle, whether its node was a reused warm one (runs.warm_start)
    and PROVISIONING -> RUNNING in one commit ─▶ follow:
    stream the log and its metrics into the DB, honour cancel and the hard
    timeout ─▶ conclude: collect result.json and the artifact ─▶ release ─▶
    SUCCEEDED | FAILED | CANCELLED | ABORTED_BEHIND (its abort_if_behind rule, checked
    as the log's metrics arrive: service.runs.early_abort), or back to QUEUED for another attempt

One owner, one rule: the executor holding a run's lease (worker.run.lease) is the
only process that changes the status of a PROVISIONING/RUNNING run, and every
change is a compare-and-set on (status, lease token) written together with
what implied it. Where a crash can leave a run, and what the next executor
(dispatched again by the janitor once the heartbeat is stale) does with it:

    PROVISIONING, no handle      adopts the job the launcher finds by the attempt's launch key on
                                 the run's recorded node (submitted, never recorded), else launches
    RUNNING with its handle      re-attaches; a job that ended meanwhile is concluded
    PROVISIONING with a handle   (left by versions that wrote them apart) moves it to RUNNING, re-attaches
    terminal                     nothing

A job that the launcher lost (LOST) but whose result.json says it succeeded is
collected, not run again. A requeue keeps the attempt's log and metrics
(tagged with the attempt); the next attempt's log follows a line that says so.

The story and the status changes are here; the pieces it uses have their own modules:
worker.run.clusters (get, claim and release a node), worker.run.log_stream (the job's log and
metrics into the DB), worker.run.trainer_job and worker.run.script_job (a run's job, and
its outputs as the run's columns).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.billing import quotas
from service.billing.storage import counted
from service.core.hardware import NodeHardware
from service.core.models import SCRIPT_KIND as SCRIPT, Artifact, LogChunk, Run, RunEvent, utcnow
from service.core.status import NODE_LOST, IllegalTransition, RunStatus, is_terminal
from service.core.storage import ArtifactStoreError, DiskFull
from service.results.queries import judge_run
from service.runs.early_abort import AbortRule, Behind, best_train_loss, judge, loss_at, saved_seconds
from service.runs.lifecycle import transition
from service.runs.logparse import LogParser, MetricPoint, ScriptLogParser
from service.runs.logs import ARCHIVE_KIND, ARCHIVE_NAME, LogFile, append_log, record_archive, write_archive
from service.runs.scripts.files import MissingScriptFile
from trainer.config import ConfigError
from worker.launchers.base import (
    ClusterHandle,
    JobSpec,
    JobState,
    JobStatus,
    Launcher,
    LauncherUnreachable,
    LaunchFailed,
    LaunchHandle,
    RetryLater,
)
from worker.run.clusters import RunClusters, cluster_of, is_reused
from worker.run.deadlines import Deadline, run_deadline, silent_too_long
from worker.run.lease import Lease, with_db_retry
from worker.run.log_stream import DEFAULT_MAX_TRAIN_POINTS, RunLog
from worker.run.script_job import OUTPUT_FILES as SCRIPT_OUTPUT_FILES, script_job, script_outcome
from worker.run.trainer_job import OUTPUT_FILES, read_result, trainer_job, trainer_outcome

log = logging.getLogger(__name__)

ACTOR = "worker"
DRIVER_ERROR = "driver error"  # reason prefix of the events that count unexpected errors
RETRY_SAYS = ", will retry"  # in a requeue's reason; dropped from the reason of the attempt that ends the run
JOB_STARTED = "job running"  # reason prefix of the event saying when a job that waited on its node began to run
SessionFactory = Callable[[], Session]
T = TypeVar("T")


def execute_run(run_id: int, *, launcher: Launcher, session_factory: SessionFactory, store: Any, settings: Any) -> str:
    """Drive run `run_id` to a final state (or hand it back to the queue); returns what happened, in words."""

    def pick_up() -> str | None:
        with session_factory() as session:
            run = session.get(Run, run_id)
            if run is None:
                return f"run {run_id} does not exist"
            if is_terminal(run.status):
                return f"run {run_id} is already {run.status}"
            if run.status == RunStatus.QUEUED.value:
                try:
                    transition(session, run, RunStatus.PROVISIONING, actor=ACTOR, reason="picked up by a worker", also={"worker_task_id": None})
                except IllegalTransition:
                    return f"run {run_id} changed state meanwhile"
                session.commit()
        return None

    retry_s = float(getattr(settings, "db_retry_s", 60.0))
    outcome = with_db_retry(pick_up, what=f"run {run_id}: pick up", deadline_s=retry_s)
    if outcome is not None:
        return outcome
    lease = Lease(session_factory, run_id, settings.heartbeat_s, settings.heartbeat_s * settings.stale_heartbeats)
    if not with_db_retry(lease.claim, what=f"run {run_id}: claim the lease", deadline_s=retry_s):
        return f"run {run_id} is being driven by another worker"
    lease.start()
    driver = RunDriver(run_id, launcher, session_factory, store, settings, lease)
    try:
        return driver.drive()
    except Exception as exc:
        log.exception("run %s: the driver failed", run_id)
        return driver.after_error(exc)
    finally:
        lease.stop()


class RunDriver:
    """One executor's pass over one run (holding its lease).

    Every status change goes through ``transition(..., owner=lease token)``;
    every database step is retried through transient errors (``with_db_retry``)
    and is safe to repeat.
    """

    def __init__(self, run_id: int, launcher: Launcher, session_factory: SessionFactory, store: Any, settings: Any, lease: Lease) -> None:
        self.run_id = run_id
        self.launcher = launcher
        self.session_factory = session_factory
        self.store = store
        self.settings = settings
        self.lease = lease
        self.token = lease.token
        self.retry_s = float(getattr(settings, "db_retry_s", 60.0))
        self.script = False  # a team's own train_gpt.py (runs.kind "script"), not the shared trainer
        self.run_log = RunLog(run_id, session_factory, retry_s=self.retry_s, script=False, attempt=1, offset=0, base=0)  # set by drive()
        self.clusters = RunClusters(run_id, launcher, session_factory, retry_s=self.retry_s, keep_warm=settings.keep_warm_minutes > 0)
        self.abort_rule: AbortRule | None = None  # the spec's abort_if_behind (service.runs.early_abort)
        self.behind: Behind | None = None  # set once the rule's step showed the run behind
        self.store_failed: str | None = None  # why an output could not be stored (a full disk)
        self.deadline = Deadline(0.0, 0.0, float(settings.hard_timeout_s), float(settings.hard_timeout_s))  # set by drive()

    def _db(self, fn: Callable[[], T], what: str) -> T:
        return with_db_retry(fn, what=f"run {self.run_id}: {what}", deadline_s=self.retry_s)

    # --- the story ------------------------------------------------------------------------
    def drive(self) -> str:
        def load() -> tuple[str, LaunchHandle | None, ClusterHandle | None, bool]:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                handle = LaunchHandle.from_json(run.launch_handle) if run.launch_handle else None
                self.script = run.kind == SCRIPT
                attempt = (run.attempts or 0) + 1
                offset = int(run.log_bytes or 0)
                first = session.scalar(select(func.min(LogChunk.offset)).where(LogChunk.run_id == self.run_id, LogChunk.attempt == attempt))
                base = int(first) if first is not None else offset
                self.run_log = RunLog(self.run_id, self.session_factory, retry_s=self.retry_s, script=self.script, attempt=attempt, offset=offset, base=base,
                                      max_train_points=int(getattr(self.settings, "max_train_points", DEFAULT_MAX_TRAIN_POINTS)),
                                      log_max_bytes=getattr(self.settings, "log_max_bytes", None) or None, truncated_at=run.log_truncated_at)
                self.abort_rule = AbortRule.of(run.abort_if_behind)
                s = self.settings
                self.deadline = run_deadline(run.spec, eval_cap_s=float(getattr(s, "eval_cap_s", 600.0)),
                                             overhead_s=float(getattr(s, "deadline_overhead_s", 300.0)), ceiling_s=float(s.hard_timeout_s))  # fmt: skip
                return run.status, handle, cluster_of(session, run), run.cancel_requested_at is not None

        status, handle, cluster, cancel_requested = self._db(load, "load")
        if is_terminal(status):
            return f"run {self.run_id} is already {status}"
        if handle is None:
            # A cancel with no job recorded ends the run at once, unless an executor that died
            # between submit and record left a job: that one is adopted below, then stopped by
            # _follow like any cancelled job (never left training for nobody).
            if cancel_requested and self._orphan_job(cluster) is None:
                return self._finish(RunStatus.CANCELLED, "cancelled by user before launch", cluster=cluster, never_up=True)
            launched = self._launch(cluster)
            if isinstance(launched, str):
                return launched
            handle, cluster = launched
        else:
            log.info("run %s: re-attaching to job %s on %s", self.run_id, handle.job_id, handle.cluster)
            if status == RunStatus.PROVISIONING.value:
                # A handle without the RUNNING it implies (written before the two became one
                # commit): finish the move, so started_at and the hard timeout hold again.
                moved = self._db(lambda: self._to_running(handle, f"re-attached to job {handle.job_id} on {handle.cluster}"), "mark running")
                if not moved:
                    return f"run {self.run_id} changed state meanwhile"
        outcome = self._follow(handle, cluster)
        self._discard_job_log(handle)
        return outcome

    def _discard_job_log(self, handle: LaunchHandle) -> None:
        """Once the run has ended, the job's own copy of its log goes (a launcher that keeps one:
        local's stdout.log): the run's log is the one stored, up to CADDIE_LOG_MAX_BYTES, in the
        database or the artifact store; a second, uncapped copy would outlast the cap."""
        discard = getattr(self.launcher, "discard_log", None)
        row = self._db(self._run_state, "read its state")
        if discard is not None and row is not None and is_terminal(row.status):  # a requeued or handed-over job's log is still read
            try:
                discard(handle)
            except OSError as exc:
                log.warning("run %s: could not remove the job's log copy: %s", self.run_id, exc)

    def _to_running(self, handle: LaunchHandle, reason: str, *, warm: bool | None = None, node: NodeHardware | None = None,
                    environment: dict[str, Any] | None = None) -> bool:
        """PROVISIONING -> RUNNING with the launch handle, in one commit (idempotent: True if it is already so).

        ``warm``: the job's cluster was a reused, kept-warm one (True) or freshly provisioned
        (False), recorded as ``runs.warm_start`` by the same UPDATE (what the accounting
        counts as saved provisioning); None (a re-attach) leaves it as it is. ``node``: what
        the node reported (``runs.node_hardware``: the rules judge it, billing bills it). ``environment``: what
        the job's Python holds where the launcher knows it at launch (``runs.environment``; collect reads it again).
        """
        stored = handle.to_json()
        also: dict[str, Any] = {"launch_handle": stored} if warm is None else {"launch_handle": stored, "warm_start": warm}
        if node is not None:
            also["node_hardware"] = node.to_json()
        if environment:
            also["environment"] = environment
        with self.session_factory() as session:
            run = session.get_one(Run, self.run_id)
            if run.status == RunStatus.RUNNING.value and run.launch_handle == stored and run.worker_task_id == self.token:
                return True  # an earlier try committed before its error came back
            try:
                transition(session, run, RunStatus.RUNNING, actor=ACTOR, reason=reason, owner=self.token, also=also)
            except IllegalTransition:
                session.rollback()
                return False
            session.commit()
            return True

    def _launch(self, recorded: ClusterHandle | None) -> tuple[LaunchHandle, ClusterHandle] | str:
        """Start this attempt's job, or adopt the one a dead executor started for it.

        ``recorded``: the cluster the run holds in the database (claimed before any submit), where
        an executor that died between submit and record left its job."""
        # The job's own timeout (the wrapper's, the node's) is a backstop a minute past the
        # deadline the executor enforces, so the executor's clearer reason normally wins.
        timeout_s = self.deadline.seconds + 60.0

        def load() -> tuple[str, JobSpec | None, str]:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                try:
                    if run.kind == SCRIPT:
                        return run.hardware, script_job(session, run, timeout_s), ""
                    return run.hardware, trainer_job(run, timeout_s), ""
                except ConfigError as exc:
                    return run.hardware, None, "invalid trainer config: " + "; ".join(f"{i.field}: {i.message}" for i in exc.issues)
                except MissingScriptFile as exc:
                    return run.hardware, None, f"invalid script run: {exc}"

        hardware, job, bad_spec = self._db(load, "load the spec")
        if job is None:
            return self._finish(RunStatus.FAILED, bad_spec, cluster=recorded, never_up=True)
        # The launch key is fixed by what the database already holds (the run and its attempt),
        # so it exists before the launcher is asked. An executor that died between submit and
        # the commit below left a job tagged with it, on the cluster it had claimed: this one
        # adopts that job instead of starting a second trainer for the same attempt, cancelled
        # or not (a cancel is then _follow's to carry out: the job is stopped, its result kept
        # if it had written one).
        job.launch_key = self._launch_key()
        found = self._orphan_job(recorded)
        if found is None and self._cancel_requested():
            return self._finish(RunStatus.CANCELLED, "cancelled by user before launch", cluster=recorded, never_up=True)
        try:
            # An adopted job stays on its own node; a new one gets a node from the launcher.
            cluster = recorded if found is not None and recorded is not None and recorded.name == found.cluster else self.clusters.acquire(hardware)
        except (RetryLater, LauncherUnreachable) as exc:
            return self._requeue(f"no node: {exc}")
        except LaunchFailed as exc:
            return self._finish(RunStatus.FAILED, f"cannot get a node: {exc}")
        if found is not None:
            what = f"job {found.job_id}" if found.job_id else f"its {found.data.get('request', 'launch')} request {found.data.get('request_id')}"
            reason = f"adopted {what} on {found.cluster}, started by an executor that died before recording it; {self._limits()}"
            node = self._node(cluster)
            reason += self._node_note(node, hardware)
            environment = self._launch_environment(found)
            moved = self._db(lambda: self._to_running(found, reason, warm=is_reused(cluster), node=node, environment=environment), "record the adopted job")
            if not moved:
                self._cancel_quietly(found)
                return f"run {self.run_id} changed state during launch; job stopped"
            return found, cluster
        try:
            handle = self.launcher.submit(cluster, job)
        except (RetryLater, LauncherUnreachable) as exc:
            return self._requeue(f"launch failed{RETRY_SAYS}: {exc}", cluster=cluster, never_up=True)
        except LaunchFailed as exc:
            return self._finish(RunStatus.FAILED, f"launch failed: {exc}", cluster=cluster, never_up=True)
        # The handle and PROVISIONING -> RUNNING are one commit: a worker that dies
        # before it leaves a run with no job (launched again), one that dies after it
        # a RUNNING run with its handle (re-attached), never a job without its state.
        warm = is_reused(cluster)
        node = self._node(cluster)
        cache = handle.data.get("compile_cache")  # the local launcher's word on the team's compile cache
        reason = (f"job {handle.job_id or 'submitted'} on {handle.cluster}" + (" (a warm cluster, reused)" if warm else "")
                  + f"; {self._limits()}" + self._node_note(node, hardware) + (f"; compile cache: {cache}" if cache else ""))
        environment = self._launch_environment(handle)
        try:
            moved = self._db(lambda: self._to_running(handle, reason, warm=warm, node=node, environment=environment), "record the launch")
        except Exception:
            self._cancel_quietly(handle)  # it cannot be recorded: it must not run unseen
            raise
        if not moved:
            self._cancel_quietly(handle)
            return f"run {self.run_id} changed state during launch; job stopped"
        return handle, cluster

    def _launch_key(self) -> str:
        return f"run-{self.run_id}-attempt-{self.run_log.attempt}"

    def _orphan_job(self, cluster: ClusterHandle | None) -> LaunchHandle | None:
        """The job of this attempt started by an executor that died before recording it, if the launcher
        can find one (on ``cluster``, the run's recorded one). While the launcher cannot be asked, nothing
        is launched: it is asked again for CADDIE_DB_RETRY_S, then the driver error hands the run back."""
        find = getattr(self.launcher, "find", None)
        if find is None:
            return None
        give_up = time.monotonic() + self.retry_s
        while True:
            try:
                found = find(self.run_id, self._launch_key(), cluster)
                return found if isinstance(found, LaunchHandle) else None
            except LauncherUnreachable as exc:
                if time.monotonic() >= give_up or self.lease.lost.is_set():
                    raise
                log.warning("run %s: cannot look for a job of this attempt now (%s); asking again", self.run_id, exc)
                time.sleep(max(float(self.settings.poll_interval_s), 1.0))

    def _node(self, cluster: ClusterHandle) -> NodeHardware | None:
        """What the launcher says the job's node has (None: a launcher that cannot say, or an error saying it)."""
        probe = getattr(self.launcher, "node_hardware", None)
        if probe is None:
            return None
        try:
            node = probe(cluster)
        except Exception as exc:  # the run goes on; its hardware is then judged from its log
            log.warning("run %s: could not read its node's hardware: %s", self.run_id, exc)
            return None
        return node if isinstance(node, NodeHardware) else None

    @staticmethod
    def _node_note(node: NodeHardware | None, asked: str) -> str:
        if node is None:
            return ""
        differs = f", not the {asked} it asked for" if node.hardware != asked else ""
        return f"; node: {node.describe()} ({node.hardware}{differs})"

    def _limits(self) -> str:
        silence = float(getattr(self.settings, "silence_timeout_s", 0.0))
        watchdog = f"stopped after {silence:.0f} s without output" if silence > 0 else "no silence watchdog"
        idle = float(getattr(self.settings, "idle_timeout_s", 0.0))  # the hang watch of the job's wrapper (local, SkyPilot node)
        hang = f"; stopped after {idle:g} s without output or CPU time" if idle > 0 else ""
        return f"deadline {self.deadline.describe()}; {watchdog}{hang}"

    def _follow(self, handle: LaunchHandle, cluster: ClusterHandle | None) -> str:
        poll = float(self.settings.poll_interval_s)
        silence_limit = float(getattr(self.settings, "silence_timeout_s", 0.0))
        heard_at, heard_bytes = time.monotonic(), -1  # silence counts from when this executor began to follow
        # A job its launcher reports PENDING (a SkyPilot node being provisioned, set up, its data downloaded) is
        # not training yet: neither its deadline nor the silence watchdog runs until it does. The wait is recorded
        # once the job runs (an event), so an executor that re-attaches later counts from the same moment.
        waited_s, saw_waiting = self._db(self._waited_s, "read when its job started"), False
        while True:
            if self.lease.lost.is_set():
                return f"run {self.run_id}: lease lost, another worker drives it now"
            self._pull_log(handle, final=False)
            if self.run_log.offset != heard_bytes:
                heard_at, heard_bytes = time.monotonic(), self.run_log.offset
            silent_s = time.monotonic() - heard_at
            row = self._db(self._run_state, "read its state")
            if row is None or is_terminal(row.status):
                return f"run {self.run_id} was finished elsewhere"
            unreachable: LauncherUnreachable | None = None
            try:
                status: JobStatus | None = self.launcher.status(handle)
            except LauncherUnreachable as exc:
                status, unreachable = None, exc
            except RetryLater as exc:
                self._pull_log(handle, final=True)
                what = "job lost" if handle.job_id else f"launch failed{RETRY_SAYS}"  # no job id: its node never came up
                return self._requeue(f"{what}: {exc}", cluster=cluster, never_up=not handle.job_id, lost=bool(handle.job_id))
            except LaunchFailed as exc:
                self._pull_log(handle, final=True)
                return self._finish(RunStatus.FAILED, f"the job could not start: {exc}", cluster=cluster, never_up=not handle.job_id)
            # A job that ended is concluded first: a run re-attached long after its
            # job finished is not failed for the time it waited.
            if status is not None and status.terminal:
                self._pull_log(handle, final=True)
                return self._conclude(handle, cluster, status)
            waiting = status is not None and status.state is JobState.PENDING
            since_launch = (utcnow() - row.started_at).total_seconds() if row.started_at is not None else 0.0
            if waiting:
                saw_waiting, heard_at, silent_s = True, time.monotonic(), 0.0
            elif saw_waiting and waited_s is None and status is not None and status.state is JobState.RUNNING:
                waited_s = self._db(lambda: self._record_start(since_launch), "record its job's start")
            ran_s = since_launch - (waited_s or 0.0)
            if self.behind is not None:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    return self._abort_behind(self.behind, cluster)
            elif row.cancel_requested_at is not None:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    return self._cancelled(handle, cluster)
            elif waiting and since_launch > self.deadline.ceiling_s:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    why = f"never started: its node was still being provisioned or set up {since_launch:.0f} s after the launch (CADDIE_HARD_TIMEOUT_S)"
                    return self._finish(RunStatus.FAILED, why, cluster=cluster, never_up=not handle.job_id)
            elif not waiting and row.started_at is not None and ran_s > self.deadline.seconds:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    self._store_outputs(handle)
                    why = f"hard timeout: still running past its deadline of {self.deadline.describe()}"
                    return self._finish(RunStatus.FAILED, why, cluster=cluster)
            elif silent_too_long(silent_s, silence_limit):
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    self._store_outputs(handle)
                    why = f"silent: no output for {silent_s:.0f} s (CADDIE_SILENCE_TIMEOUT_S={silence_limit:.0f}); the trainer was presumed hung and stopped"
                    return self._finish(RunStatus.FAILED, why, cluster=cluster)
            if unreachable is not None:
                log.warning("run %s: launcher unreachable (%s); polling again", self.run_id, unreachable)
                time.sleep(max(poll, self.settings.heartbeat_s))
            else:
                time.sleep(poll)

    def _conclude(self, handle: LaunchHandle, cluster: ClusterHandle | None, status: JobStatus) -> str:
        if status.state is JobState.LOST:
            # Only the job's supervisor may be gone (the local wrapper, a node agent):
            # a trainer that finished left its result, and a finished run is not run again.
            # A script's log is no such mark (_store_outputs): with no exit code, it runs again.
            if self._store_outputs(handle, only_if_succeeded=True) is not None:
                return self._finish(RunStatus.SUCCEEDED, "finished; its supervisor vanished, the result was collected", cluster=cluster)
            # Its node is torn down, not kept warm: the next attempt starts from step 0 on a fresh one.
            return self._requeue(status.reason or "the job vanished", cluster=cluster, lost=True)
        if status.state is JobState.CANCELLED:
            if self._cancel_requested():
                return self._cancelled(handle, cluster)
            self._store_outputs(handle)  # stopped by its machine (caddie up's Ctrl-C): what it had printed and written stays shown
            return self._finish(RunStatus.CANCELLED, status.reason or "job cancelled outside caddie", cluster=cluster)
        result = self._store_outputs(handle)
        if status.state is JobState.SUCCEEDED:
            if result is None:
                return self._finish(RunStatus.FAILED, "trainer exited 0 but wrote no result.json", cluster=cluster)
            if result.get("status", "succeeded") != "succeeded":
                return self._finish(RunStatus.FAILED, str(result.get("error") or "trainer reported failure"), cluster=cluster)
            return self._finish(RunStatus.SUCCEEDED, "", cluster=cluster)
        reason = status.reason or (result or {}).get("error") or f"trainer exited with code {status.exit_code}"
        return self._finish(RunStatus.FAILED, str(reason), cluster=cluster)

    # --- the job ------------------------------------------------------------------------------
    def _cancel_job(self, handle: LaunchHandle) -> bool:
        """Stop the job; False if the launcher cannot be reached now (the caller tries again next poll)."""
        try:
            self.launcher.cancel(handle)
            return True
        except LauncherUnreachable as exc:
            log.warning("run %s: cannot stop the job now (%s); trying again", self.run_id, exc)
            return False

    def _cancel_quietly(self, handle: LaunchHandle) -> None:
        try:
            self.launcher.cancel(handle)
        except Exception:  # noqa: BLE001 (best effort: the job's own timeout is the backstop)
            log.warning("run %s: could not stop job %s", self.run_id, handle.job_id, exc_info=True)

    # --- log streaming ------------------------------------------------------------------------
    def _pull_log(self, handle: LaunchHandle, final: bool) -> None:
        """Store what is new of the job's log and its metrics (worker.run.log_stream); judge progress as they come."""
        self.run_log.pull(self.launcher, handle, final, self._points_arrived)

    def _points_arrived(self, points: list[MetricPoint]) -> None:
        if self.abort_rule is not None and self.behind is None:
            self._judge_progress(self.abort_rule, points)

    # --- outputs -----------------------------------------------------------------------------
    def _store_outputs(self, handle: LaunchHandle, *, only_if_succeeded: bool = False) -> dict[str, Any] | None:
        """Collect the job's files: result.json into the run's columns, every output file into the store.

        only_if_succeeded: store nothing (and return None) unless result.json says the run succeeded. A script
        run has no result.json: its "result" is read from its log, which prints scores before its last one (the
        2026-04-09 record prints its sliding-window score, then runs TTT for minutes), so a stopped script's log
        would pass for a finished one; for a script this stores nothing.
        """
        if only_if_succeeded and self.script:
            return None
        with tempfile.TemporaryDirectory(prefix=f"caddie-run-{self.run_id}-") as tmp:
            try:
                outdir = self.launcher.collect(handle, Path(tmp))
            except (LaunchFailed, RetryLater, LauncherUnreachable) as exc:
                log.warning("run %s: could not collect outputs: %s", self.run_id, exc)
                return None
            # A launcher that reads the node's GPUs from the node itself (SkyPilot): that report, not
            # the launch-time one, is what the rules judge and billing bills.
            report = getattr(self.launcher, "node_report", None)
            node = report(outdir) if report is not None else None
            environment = self._environment(handle, outdir)
            if self.script:
                if self.run_log.parser.summary.final is None:
                    self.run_log.reread()
                values = self._script_values(outdir)
                result = values["result"]
            else:
                result = read_result(outdir / "result.json")
            if only_if_succeeded and (result is None or result.get("status") != "succeeded"):
                return None
            stored = []
            # The job's stream is the log the run ends with: archived from its chunks by _finish, once.
            outputs = [(f, k) for f, k in (SCRIPT_OUTPUT_FILES if self.script else OUTPUT_FILES)
                       if (f, k) != (ARCHIVE_NAME, ARCHIVE_KIND) and (outdir / f).is_file()]  # fmt: skip
            # A first look at the room, so a file that cannot fit is never uploaded; write() decides.
            keep, left_out = self._within_quota([(f, (outdir / f).stat().st_size) for f, _ in outputs])
            for filename, kind in outputs:
                if filename not in keep:
                    continue  # over the team's storage quota: the run's note says so
                try:
                    uri, size, sha = self.store.put(self.run_id, kind, outdir / filename)
                except DiskFull as exc:
                    # The figures still land below; the run cannot end SUCCEEDED without its files.
                    log.error("run %s: %s", self.run_id, exc)
                    self.store_failed = str(exc)
                    continue
                stored.append((filename, kind, uri, size, sha))
        if not self.script:
            if result is None and self.run_log.parser.summary.final is None:
                self.run_log.reread()
            assert isinstance(self.run_log.parser, LogParser)
            values = trainer_outcome(result, self.run_log.parser.summary)
        if isinstance(node, NodeHardware):
            values = {**values, "node_hardware": node.to_json()}
        if environment:
            values = {**values, "environment": environment}

        quota = int(getattr(self.settings, "team_storage_quota_bytes", 0) or 0)

        def write() -> list[str]:
            """Register what fits and commit; returns the uris stored but left out (to delete)."""
            with self.session_factory() as session:
                with counted(session, self.run_id):  # the team's stored bytes move with its artifacts, in this commit
                    registered, dropped, note = stored, [], ""
                    if quota > 0 and (stored or left_out):
                        # Decided again on the team's total, locked to this commit: another run's
                        # collect of the team waits here and then counts what this one registered.
                        team, used = quotas.room_for_run_outputs(session, self.run_id, lock=True)
                        fits, late = quotas.fit_outputs(used, quota, [(f, b) for f, _, _, b, _ in stored])
                        registered = [o for o in stored if o[0] in fits]
                        dropped = [o[2] for o in stored if o[0] not in fits]
                        left = [*left_out, *late]
                        note = quotas.outputs_left_out_note(team, quota, used, left) if left else ""
                    session.execute(delete(Artifact).where(Artifact.run_id == self.run_id))  # a second collect replaces the first
                    session.add_all(Artifact(run_id=self.run_id, kind=k, uri=u, bytes=b, sha256=h, created_at=utcnow()) for _, k, u, b, h in registered)
                    if note:  # a note on the run: what was left out, and the quota that left it out
                        log.warning("run %s: %s", self.run_id, note)
                        status = session.scalar(select(Run.status).where(Run.id == self.run_id)) or ""
                        session.add(RunEvent(run_id=self.run_id, at=utcnow(), from_status=status, to_status=status, actor=ACTOR, reason=note))
                    if values:
                        run = session.get_one(Run, self.run_id)
                        for column, value in values.items():
                            setattr(run, column, value)
                        judge_run(run)  # the rule checks land with the figures they judge, in one commit
                session.commit()
                return dropped

        for uri in self._db(write, "store its outputs"):
            try:
                self.store.delete(uri)  # no row names it; the quota never counted it
            except ArtifactStoreError as exc:
                log.warning("run %s: could not remove %s, left out by the storage quota: %s", self.run_id, uri, exc)
        return result

    def _launch_environment(self, handle: LaunchHandle) -> dict[str, Any] | None:
        """What the job's Python holds, where its launcher knows it once the job is submitted (None otherwise)."""
        return self._environment_from("environment_at_launch", handle)

    def _environment(self, handle: LaunchHandle, outdir: Path) -> dict[str, Any] | None:
        """What the job's Python held, as its launcher read it after collect."""
        return self._environment_from("environment", handle, outdir)

    def _environment_from(self, method: str, *args: Any) -> dict[str, Any] | None:
        """The launcher's optional ``method``'s report (None: a launcher without it, or an error saying it:
        the launch stands and the run's figures still land; only its environment goes unrecorded)."""
        read = getattr(self.launcher, method, None)
        if read is None:
            return None
        try:
            found = read(*args)
        except Exception as exc:
            log.warning("run %s: could not read its environment (%s): %s", self.run_id, method, exc)
            return None
        return found if isinstance(found, dict) else None

    def _within_quota(self, files: list[tuple[str, int]]) -> tuple[set[str], list[tuple[str, int]]]:
        """The output files (name, bytes) that fit the team's storage quota now, and those that do
        not (service.billing.quotas); a first look, unlocked: the collect's write decides."""
        quota = int(getattr(self.settings, "team_storage_quota_bytes", 0) or 0)
        if quota <= 0 or not files:
            return {name for name, _ in files}, []

        def room() -> tuple[str, int]:
            with self.session_factory() as session:
                return quotas.room_for_run_outputs(session, self.run_id)

        _, used = self._db(room, "read its team's storage")
        keep, left = quotas.fit_outputs(used, quota, files)
        return set(keep), left

    def _script_values(self, outdir: Path) -> dict[str, Any]:
        def spec() -> dict[str, Any]:
            with self.session_factory() as session:
                return dict(session.get_one(Run, self.run_id).spec)

        assert isinstance(self.run_log.parser, ScriptLogParser)
        return script_outcome(self.run_log.parser.summary, self._db(spec, "read its spec"), outdir)

    # --- endings -------------------------------------------------------------------------------
    def _finish(self, to: RunStatus, reason: str, *, cluster: ClusterHandle | None = None, also: dict[str, Any] | None = None, never_up: bool = False) -> str:
        self.clusters.release(cluster, never_up=never_up)
        if to is RunStatus.SUCCEEDED and self.store_failed:
            to, reason = RunStatus.FAILED, f"trained and evaluated (figures kept), but the artifact store could not take its outputs: {self.store_failed}"

        archived = self._archive_log()

        def move() -> str:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                if is_terminal(run.status):
                    return f"run {self.run_id} was already {run.status}"
                try:
                    transition(session, run, to, actor=ACTOR, reason=reason, owner=self.token, also=also)
                except IllegalTransition as exc:
                    session.rollback()
                    log.error("run %s: cannot end as %s: %s", self.run_id, to.value, exc)
                    return f"run {self.run_id}: {exc}"
                if archived is not None:
                    record_archive(session, archived)  # the log's one home changes with the status, in one commit
                session.commit()
            return f"run {self.run_id} {to.value}" + (f": {reason}" if reason and to is not RunStatus.SUCCEEDED else "")

        return self._db(move, f"end as {to.value}")

    def _archive_log(self) -> LogFile | None:
        """The run's log, about to end, written to the store (service.runs.logs): recorded, and its
        chunks deleted, by the final commit. Should the store refuse it (a full disk) the chunks stay
        the log and the janitor's sweep archives it later; a crash before the commit does the same."""

        def write() -> LogFile | None:
            with self.session_factory() as session:
                return write_archive(session, self.store, self.run_id)

        try:
            return self._db(write, "archive its log")
        except ArtifactStoreError as exc:
            log.warning("run %s: its log stays in the database for now: %s", self.run_id, exc)
            return None

    def _cancelled(self, handle: LaunchHandle, cluster: ClusterHandle | None) -> str:
        """End a run whose cancel stopped its job: SUCCEEDED with its result if the trainer had
        already written one (a cancel racing the end must not throw a paid result away), else CANCELLED.
        A script run never has one (_store_outputs): it ends CANCELLED keeping what its log printed (figures,
        curves, its files), which counts nowhere but shows how far it got."""
        if self._store_outputs(handle, only_if_succeeded=True) is not None:
            return self._finish(RunStatus.SUCCEEDED, "the cancel came after the run had written its result: the result is kept", cluster=cluster)
        if self.script:
            self._store_outputs(handle)
            return self._finish(RunStatus.CANCELLED, "cancelled by user; the figures its log had printed are kept", cluster=cluster)
        return self._finish(RunStatus.CANCELLED, "cancelled by user", cluster=cluster)

    def _judge_progress(self, rule: AbortRule, points: list[Any]) -> None:
        """Early abort: once the rule's step is logged, compare with the team's best (service.runs.early_abort)."""
        loss = loss_at(rule, points)
        if loss is None:
            return

        def best() -> tuple[float, int] | None:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                return best_train_loss(session, team_id=run.team_id, track=run.track, hardware=run.hardware, step=rule.step, exclude_run=run.id)

        self.behind = judge(rule, loss, self._db(best, "find the team's best run"))
        if self.behind is not None:
            log.info("run %s: %s", self.run_id, self.behind.reason)

    def _abort_behind(self, behind: Behind, cluster: ClusterHandle | None) -> str:
        """End as ABORTED_BEHIND with the node time saved (its expected time minus what it used)."""

        def saved() -> float:
            with self.session_factory() as session:
                return saved_seconds(session, session.get_one(Run, self.run_id), float(getattr(self.settings, "run_overhead_s", 0.0)), utcnow())

        return self._finish(RunStatus.ABORTED_BEHIND, behind.reason, cluster=cluster, also={"saved_seconds": self._db(saved, "measure the time saved")})

    def _requeue(self, reason: str, *, cluster: ClusterHandle | None = None, never_up: bool = False, lost: bool = False) -> str:
        """Back to the queue for another attempt (attempts+1), or FAILED once attempts run out.

        The attempt's log and metrics stay; a line in the log says where the next attempt begins.
        lost: the job's node died under it; it is torn down (worker.run.clusters), and the
        next attempt, a relaunch from step 0 on a fresh node, is billed as an attempt of its own.
        """
        self.clusters.release(cluster, never_up=never_up, lost=lost)
        if lost:
            reason = f"{NODE_LOST}: {reason}"  # relaunched at once, no retry wait (service.queue.state)
        give_up = self._db(lambda: self._gives_up(lost), "count its attempts")
        archived = self._archive_log() if give_up else None  # this requeue fails the run

        def move() -> str:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                if is_terminal(run.status) or run.status == RunStatus.QUEUED.value:
                    return f"run {self.run_id} was already {run.status}"
                attempt = (run.attempts or 0) + 1
                if give_up:  # the last attempt's reason without its promise of another
                    to, why = RunStatus.FAILED, f"{give_up}: {reason.replace(RETRY_SAYS, '', 1)}"
                    also: dict[str, Any] = {}
                else:
                    to, why = RunStatus.QUEUED, reason
                    last = session.scalar(select(LogChunk.data).where(LogChunk.run_id == self.run_id).order_by(LogChunk.offset.desc()).limit(1))
                    again = " (no checkpoint: it starts again from step 0)" if lost else ""
                    note = ("" if not last or last.endswith("\n") else "\n") + f"caddie: attempt {attempt} ended ({' '.join(reason.split())}); queued for attempt {attempt + 1}{again}\n"
                    append_log(session, self.run_id, note, attempt=attempt, offset=int(run.log_bytes or 0))
                    also = {"launch_handle": None, "cluster_id": None, "worker_task_id": None}
                try:
                    transition(session, run, to, actor=ACTOR, reason=why, owner=self.token, also=also)
                    if archived is not None and is_terminal(to.value):
                        record_archive(session, archived)
                    session.commit()
                except (IllegalTransition, IntegrityError) as exc:
                    session.rollback()
                    return f"run {self.run_id}: {exc}"
            return f"run {self.run_id} {to.value}: {why}"

        return self._db(move, "requeue")

    def _gives_up(self, lost: bool) -> str:
        """Why the attempt that just ended is the run's last ('' : it goes back to the queue).

        A lost node (not the run's doing) counts against CADDIE_MAX_NODE_LOST, every other
        requeue against CADDIE_MAX_ATTEMPTS: a preempted spot node does not use up a run's
        retries, and a run whose node dies every time still ends."""
        with self.session_factory() as session:
            attempt = (session.scalar(select(Run.attempts).where(Run.id == self.run_id)) or 0) + 1
            lost_before = session.scalar(select(func.count(RunEvent.id)).where(RunEvent.run_id == self.run_id, RunEvent.to_status == RunStatus.QUEUED.value,
                                                                              RunEvent.reason.startswith(NODE_LOST))) or 0  # fmt: skip
        s = self.settings
        if lost:
            times = lost_before + 1
            return f"gave up after its node was lost {times} times (CADDIE_MAX_NODE_LOST={s.max_node_lost})" if times >= s.max_node_lost else ""
        others = attempt - lost_before
        if others < s.max_attempts:
            return ""
        counted = f" ({lost_before} of them ended by a lost node, counted apart)" if lost_before else ""
        return f"gave up after {attempt} attempts{counted}"

    def after_error(self, exc: BaseException) -> str:
        """An error the driver did not expect (a launcher bug, a DB down for longer than the retries).

        Counted as a run event; the lease is given up so the janitor dispatches the run
        again. After max_driver_errors of them since its last status change the run
        fails with the error: no run is retried without end.
        """
        what = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        limit = int(getattr(self.settings, "max_driver_errors", 3))
        try:
            with self.session_factory() as session:
                run = session.get(Run, self.run_id)
                if run is None or is_terminal(run.status) or run.worker_task_id != self.token:
                    return f"run {self.run_id}: driver error ({what}); the run is no longer ours"
                last_move = session.scalar(
                    select(func.max(RunEvent.id)).where(
                        RunEvent.run_id == self.run_id, (RunEvent.from_status.is_(None)) | (RunEvent.from_status != RunEvent.to_status)
                    )
                ) or 0
                earlier = session.scalar(
                    select(func.count(RunEvent.id)).where(
                        RunEvent.run_id == self.run_id, RunEvent.id > last_move, RunEvent.actor == ACTOR, RunEvent.reason.startswith(DRIVER_ERROR)
                    )
                ) or 0
                handle = LaunchHandle.from_json(run.launch_handle) if run.launch_handle else None
                cluster = cluster_of(session, run)
            n = earlier + 1
            if n < limit:
                with self.session_factory() as session:
                    session.add(RunEvent(run_id=self.run_id, at=utcnow(), from_status=run.status, to_status=run.status, actor=ACTOR,
                                         reason=f"{DRIVER_ERROR} {n} of {limit}: {what}"))  # fmt: skip
                    session.commit()
                self.lease.release()
                return f"run {self.run_id}: driver error {n} of {limit} ({what}); it will be dispatched again"
            if handle is not None:
                self._cancel_quietly(handle)
            return self._finish(RunStatus.FAILED, f"gave up after {n} driver errors: {what}", cluster=cluster)
        except Exception:  # noqa: BLE001 (e.g. the database is still down: the janitor acts once the heartbeat is stale)
            log.exception("run %s: could not record the driver error", self.run_id)
            return f"run {self.run_id}: driver error ({what})"

    # --- when the job started ------------------------------------------------------------------
    def _waited_s(self) -> float | None:
        """Seconds this attempt's job waited on its node before it ran (provisioning, setup), as recorded by
        ``_record_start``; None: not recorded (a launcher that starts jobs at once, or not started yet)."""
        with self.session_factory() as session:
            started_at = session.scalar(select(Run.started_at).where(Run.id == self.run_id))
            if started_at is None:
                return None
            at = session.scalar(select(func.max(RunEvent.at)).where(RunEvent.run_id == self.run_id, RunEvent.at >= started_at,
                                                                     RunEvent.reason.startswith(JOB_STARTED)))  # fmt: skip
            return (at - started_at).total_seconds() if at is not None else None

    def _record_start(self, waited_s: float) -> float:
        """An event of the run: its job runs now, after waiting ``waited_s`` on its node; returns that wait."""
        with self.session_factory() as session:
            status = session.scalar(select(Run.status).where(Run.id == self.run_id)) or RunStatus.RUNNING.value
            reason = (f"{JOB_STARTED} on its node {waited_s:.0f} s after its launch (provisioning and setup); "
                      "its deadline and the silence watchdog count from now")  # fmt: skip
            session.add(RunEvent(run_id=self.run_id, at=utcnow(), from_status=status, to_status=status, actor=ACTOR, reason=reason))
            session.commit()
        log.info("run %s: job running after %.0f s of provisioning and setup", self.run_id, waited_s)
        return waited_s

    # --- small reads -------------------------------------------------------------------------------
    def _run_state(self) -> Any:
        with self.session_factory() as session:
            return session.execute(select(Run.status, Run.cancel_requested_at, Run.started_at).where(Run.id == self.run_id)).first()

    def _cancel_requested(self) -> bool:
        row = self._db(self._run_state, "read its state")
        return row is not None and row.cancel_requested_at is not None
