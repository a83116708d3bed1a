"""Drive one run through a launcher, from dispatch to its final state.

    claim the lease ─▶ launch: acquire (and claim) a node, submit the trainer job,
    then the job's handle and PROVISIONING -> RUNNING in one commit ─▶ follow:
    stream the log and its metrics into the DB, honour cancel and the hard
    timeout ─▶ conclude: collect result.json and the artifact ─▶ release ─▶
    SUCCEEDED | FAILED | CANCELLED | ABORTED_BEHIND (its abort_if_behind rule, checked
    as the log's metrics arrive: service.early_abort), or back to QUEUED for another attempt

One owner, one rule: the executor holding a run's lease (worker.lease) is the
only process that changes the status of a PROVISIONING/RUNNING run, and every
change is a compare-and-set on (status, lease token) written together with
what implied it. Where a crash can leave a run, and what the next executor
(dispatched again by the janitor once the heartbeat is stale) does with it:

    PROVISIONING, no handle      launches (nothing was submitted, or it was stopped)
    RUNNING with its handle      re-attaches; a job that ended meanwhile is concluded
    PROVISIONING with a handle   (left by versions that wrote them apart) moves it to RUNNING, re-attaches
    terminal                     nothing

A job that the launcher lost (LOST) but whose result.json says it succeeded is
collected, not run again. A requeue keeps the attempt's log and metrics
(tagged with the attempt); the next attempt's log follows a line that says so.
"""

from __future__ import annotations

import codecs
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.early_abort import AbortRule, Behind, best_train_loss, judge, loss_at, saved_seconds
from service.lifecycle import IllegalTransition, RunStatus, is_terminal, transition
from service.models import Artifact, Cluster, LogChunk, Metric, Run, RunEvent, utcnow
from service.results.queries import judge_run
from trainer.config import ConfigError, TrainerConfig
from worker.launchers.base import (
    ClusterHandle,
    JobSpec,
    JobState,
    JobStatus,
    LaunchFailed,
    LaunchHandle,
    Launcher,
    LauncherUnreachable,
    RetryLater,
)
from service.scripts.files import MissingScriptFile
from worker.lease import ACTIVE, Lease, with_db_retry
from worker.logparse import LogParser, ScriptLogParser
from worker.script_runs import OUTPUT_FILES as SCRIPT_OUTPUT_FILES, SCRIPT, script_job, script_outcome

log = logging.getLogger(__name__)

ACTOR = "worker"
DRIVER_ERROR = "driver error"  # reason prefix of the events that count unexpected errors
# A log line longer than this is stored in pieces rather than waited for.
MAX_PENDING_LINE_BYTES = 64 * 1024
# Output files of a run and the artifact kind each is stored as.
OUTPUT_FILES = (("model.int6.ptz", "model"), ("train_gpt.py", "code"), ("train.log", "log"), ("stdout.log", "log"), ("result.json", "result"), ("metrics.jsonl", "metrics"))
RESULT_COLUMNS = {
    "val_bpb": "val_bpb",
    "val_loss": "val_loss",
    "pre_ttt_bpb": "pre_ttt_bpb",
    "total_bytes": "artifact_bytes",
    "model_bytes": "model_bytes",
    "code_bytes": "code_bytes",
    "train_seconds": "train_seconds",
    "eval_seconds": "eval_seconds",
    "steps": "steps",
    "peak_memory_mib": "peak_memory_mib",
}

SessionFactory = Callable[[], Session]
T = TypeVar("T")


def _same_length_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    # One '?' per undecodable byte keeps the stored text's UTF-8 length equal to
    # the bytes read, so log offsets stay byte offsets of the job's own log.
    return "?" * (err.end - err.start), err.end


codecs.register_error("caddie_same_length", _same_length_replace)


def decode_log(data: bytes) -> str:
    """Log bytes as text of exactly the same UTF-8 length (bad bytes and NULs become '?')."""
    return data.decode("utf-8", errors="caddie_same_length").replace("\x00", "?")


def complete_part(data: bytes, final: bool) -> int:
    """How many leading bytes of `data` to store now: whole lines, unless the job
    ended (everything) or a line grew too long (cut at a character boundary)."""
    if final:
        return len(data)
    cut = data.rfind(b"\n") + 1
    if cut or len(data) < MAX_PENDING_LINE_BYTES:
        return cut
    # Cut before the last character's first byte (it may be incomplete); the
    # rest comes with the next read.
    cut = len(data) - 1
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # continuation bytes 10xxxxxx
        cut -= 1
    return cut or len(data)


def job_env(run: Run) -> dict[str, str]:
    """The trainer's environment for `run`: its knobs and its seed (data paths are the launcher's, from the data variant).

    Raises ConfigError if the stored spec no longer validates (e.g. the trainer changed).
    """
    cfg = TrainerConfig.from_dict(dict(run.spec or {}))
    overrides = cfg.overrides()
    env = {k: v for k, v in cfg.to_env().items() if k in overrides}
    env["SEED"] = str(int(run.seed))
    return env


def data_variant(run: Run) -> str:
    """The data variant a run trains and is scored on: ``sp<VOCAB_SIZE>`` (the tokenizer must match the model's vocabulary)."""
    return f"sp{TrainerConfig.from_dict(dict(run.spec or {})).vocab_size}"


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
        self.script = False  # a team's own train_gpt.py (runs.kind "script"), not the shared trainer
        self.parser: LogParser | ScriptLogParser = LogParser()
        self.attempt = 1  # which launch of the run this is (runs.attempts + 1)
        self.offset = 0  # bytes of the run's log stored so far (all attempts)
        self.base = 0  # where this attempt's log starts in the run's log
        self.abort_rule: AbortRule | None = None  # the spec's abort_if_behind (service.early_abort)
        self.behind: Behind | None = None  # set once the rule's step showed the run behind

    def _db(self, fn: Callable[[], T], what: str) -> T:
        return with_db_retry(fn, what=f"run {self.run_id}: {what}", deadline_s=float(getattr(self.settings, "db_retry_s", 60.0)))

    # --- the story ------------------------------------------------------------------------
    def drive(self) -> str:
        def load() -> tuple[str, LaunchHandle | None, ClusterHandle | None, bool]:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                handle = LaunchHandle.from_json(run.launch_handle) if run.launch_handle else None
                self.script = run.kind == SCRIPT
                self.parser = self._new_parser()
                self.attempt = (run.attempts or 0) + 1
                self.offset = int(run.log_bytes or 0)
                first = session.scalar(select(func.min(LogChunk.offset)).where(LogChunk.run_id == self.run_id, LogChunk.attempt == self.attempt))
                self.base = int(first) if first is not None else self.offset
                self.abort_rule = AbortRule.of(run.abort_if_behind)
                return run.status, handle, self._cluster_handle(session, run), run.cancel_requested_at is not None

        status, handle, cluster, cancel_requested = self._db(load, "load")
        if is_terminal(status):
            return f"run {self.run_id} is already {status}"
        if handle is None:
            if cancel_requested:
                return self._finish(RunStatus.CANCELLED, "cancelled by user before launch", cluster=cluster)
            launched = self._launch()
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
        return self._follow(handle, cluster)

    def _to_running(self, handle: LaunchHandle, reason: str) -> bool:
        """PROVISIONING -> RUNNING with the launch handle, in one commit (idempotent: True if it is already so)."""
        stored = handle.to_json()
        with self.session_factory() as session:
            run = session.get_one(Run, self.run_id)
            if run.status == RunStatus.RUNNING.value and run.launch_handle == stored and run.worker_task_id == self.token:
                return True  # an earlier try committed before its error came back
            try:
                transition(session, run, RunStatus.RUNNING, actor=ACTOR, reason=reason, owner=self.token, also={"launch_handle": stored})
            except IllegalTransition:
                session.rollback()
                return False
            session.commit()
            return True

    def _launch(self) -> tuple[LaunchHandle, ClusterHandle] | str:
        timeout_s = float(self.settings.hard_timeout_s)

        def load() -> tuple[str, JobSpec | None, str]:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                try:
                    if run.kind == SCRIPT:
                        return run.hardware, script_job(session, run, timeout_s), ""
                    job = JobSpec(run_id=self.run_id, env=job_env(run), hardware=run.hardware, timeout_s=timeout_s, data_variant=data_variant(run))
                    return run.hardware, job, ""
                except ConfigError as exc:
                    return run.hardware, None, "invalid trainer config: " + "; ".join(f"{i.field}: {i.message}" for i in exc.issues)
                except MissingScriptFile as exc:
                    return run.hardware, None, f"invalid script run: {exc}"

        hardware, job, bad_spec = self._db(load, "load the spec")
        if job is None:
            return self._finish(RunStatus.FAILED, bad_spec)
        try:
            cluster = self._acquire(hardware)
        except (RetryLater, LauncherUnreachable) as exc:
            return self._requeue(f"no node: {exc}")
        except LaunchFailed as exc:
            return self._finish(RunStatus.FAILED, f"cannot get a node: {exc}")
        if self._cancel_requested():
            return self._finish(RunStatus.CANCELLED, "cancelled by user before launch", cluster=cluster)
        try:
            handle = self.launcher.submit(cluster, job)
        except (RetryLater, LauncherUnreachable) as exc:
            return self._requeue(f"launch failed, will retry: {exc}", cluster=cluster)
        except LaunchFailed as exc:
            return self._finish(RunStatus.FAILED, f"launch failed: {exc}", cluster=cluster)
        # The handle and PROVISIONING -> RUNNING are one commit: a worker that dies
        # before it leaves a run with no job (launched again), one that dies after it
        # a RUNNING run with its handle (re-attached), never a job without its state.
        try:
            moved = self._db(lambda: self._to_running(handle, f"job {handle.job_id or 'submitted'} on {handle.cluster}"), "record the launch")
        except Exception:
            self._cancel_quietly(handle)  # it cannot be recorded: it must not run unseen
            raise
        if not moved:
            self._cancel_quietly(handle)
            return f"run {self.run_id} changed state during launch; job stopped"
        return handle, cluster

    def _follow(self, handle: LaunchHandle, cluster: ClusterHandle | None) -> str:
        poll = float(self.settings.poll_interval_s)
        while True:
            if self.lease.lost.is_set():
                return f"run {self.run_id}: lease lost, another worker drives it now"
            self._pull_log(handle, final=False)
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
                return self._requeue(f"job lost: {exc}", cluster=cluster)
            except LaunchFailed as exc:
                self._pull_log(handle, final=True)
                return self._finish(RunStatus.FAILED, f"the job could not start: {exc}", cluster=cluster)
            # A job that ended is concluded first: a run re-attached long after its
            # job finished is not failed for the time it waited.
            if status is not None and status.terminal:
                self._pull_log(handle, final=True)
                return self._conclude(handle, cluster, status)
            if self.behind is not None:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    return self._abort_behind(self.behind, cluster)
            elif row.cancel_requested_at is not None:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    return self._finish(RunStatus.CANCELLED, "cancelled by user", cluster=cluster)
            elif row.started_at is not None and (utcnow() - row.started_at).total_seconds() > self.settings.hard_timeout_s:
                if self._cancel_job(handle):
                    self._pull_log(handle, final=True)
                    self._store_outputs(handle)
                    return self._finish(RunStatus.FAILED, f"hard timeout: still running after {self.settings.hard_timeout_s:.0f} s", cluster=cluster)
            if unreachable is not None:
                log.warning("run %s: launcher unreachable (%s); polling again", self.run_id, unreachable)
                time.sleep(max(poll, self.settings.heartbeat_s))
            else:
                time.sleep(poll)

    def _conclude(self, handle: LaunchHandle, cluster: ClusterHandle | None, status: JobStatus) -> str:
        if status.state is JobState.LOST:
            # Only the job's supervisor may be gone (the local wrapper, a node agent):
            # a trainer that finished left its result, and a finished run is not run again.
            if self._store_outputs(handle, only_if_succeeded=True) is not None:
                return self._finish(RunStatus.SUCCEEDED, "finished; its supervisor vanished, the result was collected", cluster=cluster)
            return self._requeue(status.reason or "the job vanished", cluster=cluster)
        if status.state is JobState.CANCELLED:
            requested = self._cancel_requested()
            return self._finish(RunStatus.CANCELLED, "cancelled by user" if requested else (status.reason or "job cancelled outside caddie"), cluster=cluster)
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
        """Copy new log bytes into log_chunks (and parsed metrics into metrics), one transaction per read.

        Offsets run on across attempts (one log per run); this attempt's job log
        starts at ``self.base`` of it.
        """
        while True:
            try:
                data = self.launcher.read_log(handle, self.offset - self.base)
            except (LauncherUnreachable, RetryLater) as exc:
                log.warning("run %s: cannot read the log now (%s)", self.run_id, exc)
                return
            n = complete_part(data, final)
            if n <= 0:
                break
            text = decode_log(data[:n])
            points = self.parser.feed(text)
            if final:
                points += self.parser.flush()

            def write() -> None:
                with self.session_factory() as session:
                    session.add(LogChunk(run_id=self.run_id, offset=self.offset, data=text, created_at=utcnow(), attempt=self.attempt))
                    session.add_all(
                        Metric(run_id=self.run_id, kind=p.kind, step=p.step, train_loss=p.train_loss, val_loss=p.val_loss, val_bpb=p.val_bpb,
                               elapsed_ms=p.elapsed_ms, attempt=self.attempt)
                        for p in points
                    )  # fmt: skip
                    session.execute(
                        update(Run).where(Run.id == self.run_id).values(log_bytes=self.offset + n), execution_options={"synchronize_session": False}
                    )
                    try:
                        session.commit()
                    except IntegrityError:
                        # This offset is already stored (an earlier executor, or an earlier
                        # try of this commit, got this far); skip ahead.
                        session.rollback()

            self._db(write, "store its log")
            self.offset += n
            if self.abort_rule is not None and self.behind is None:
                self._judge_progress(self.abort_rule, points)
            if n < len(data):
                break  # the rest is an unfinished line

    # --- outputs -----------------------------------------------------------------------------
    def _store_outputs(self, handle: LaunchHandle, *, only_if_succeeded: bool = False) -> dict[str, Any] | None:
        """Collect the job's files: result.json into the run's columns, every output file into the store.

        only_if_succeeded: store nothing (and return None) unless result.json says the run succeeded.
        """
        with tempfile.TemporaryDirectory(prefix=f"caddie-run-{self.run_id}-") as tmp:
            try:
                outdir = self.launcher.collect(handle, Path(tmp))
            except (LaunchFailed, RetryLater, LauncherUnreachable) as exc:
                log.warning("run %s: could not collect outputs: %s", self.run_id, exc)
                return None
            if self.script:
                if self.parser.summary.final is None:
                    self._fill_from_log()
                values = self._script_values()
                result = values["result"]
            else:
                result = _read_result(outdir / "result.json")
            if only_if_succeeded and (result is None or result.get("status") != "succeeded"):
                return None
            stored = []
            for filename, kind in SCRIPT_OUTPUT_FILES if self.script else OUTPUT_FILES:
                path = outdir / filename
                if path.is_file():
                    uri, size, sha = self.store.put(self.run_id, kind, path)
                    stored.append((kind, uri, size, sha))
        if not self.script:
            if result is None and self.parser.summary.final is None:
                self._fill_from_log()
            assert isinstance(self.parser, LogParser)
            values = _result_values(result, self.parser)

        def write() -> None:
            with self.session_factory() as session:
                session.execute(delete(Artifact).where(Artifact.run_id == self.run_id))  # a second collect replaces the first
                session.add_all(Artifact(run_id=self.run_id, kind=k, uri=u, bytes=b, sha256=h, created_at=utcnow()) for k, u, b, h in stored)
                if values:
                    run = session.get_one(Run, self.run_id)
                    for column, value in values.items():
                        setattr(run, column, value)
                    judge_run(run)  # the rule checks land with the figures they judge, in one commit
                session.commit()

        self._db(write, "store its outputs")
        return result

    def _fill_from_log(self) -> None:
        # A re-attached executor has not seen the early log; parse what the DB holds of this attempt.
        def read() -> str:
            with self.session_factory() as session:
                chunks = session.scalars(
                    select(LogChunk.data).where(LogChunk.run_id == self.run_id, LogChunk.attempt == self.attempt).order_by(LogChunk.offset)
                )
                return "".join(chunks)

        self.parser = self._new_parser()
        self.parser.feed(self._db(read, "read its log"))
        self.parser.flush()

    def _new_parser(self) -> LogParser | ScriptLogParser:
        return ScriptLogParser() if self.script else LogParser()

    def _script_values(self) -> dict[str, Any]:
        def spec() -> dict[str, Any]:
            with self.session_factory() as session:
                return dict(session.get_one(Run, self.run_id).spec)

        assert isinstance(self.parser, ScriptLogParser)
        return script_outcome(self.parser.summary, self._db(spec, "read its spec"))

    # --- endings -------------------------------------------------------------------------------
    def _finish(self, to: RunStatus, reason: str, *, cluster: ClusterHandle | None = None, also: dict[str, Any] | None = None) -> str:
        self._release(cluster)

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
                session.commit()
            return f"run {self.run_id} {to.value}" + (f": {reason}" if reason and to is not RunStatus.SUCCEEDED else "")

        return self._db(move, f"end as {to.value}")

    def _judge_progress(self, rule: AbortRule, points: list[Any]) -> None:
        """Early abort: once the rule's step is logged, compare with the team's best (service.early_abort)."""
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

    def _requeue(self, reason: str, *, cluster: ClusterHandle | None = None) -> str:
        """Back to the queue for another attempt (attempts+1), or FAILED once attempts run out.

        The attempt's log and metrics stay; a line in the log says where the next attempt begins.
        """
        self._release(cluster)

        def move() -> str:
            with self.session_factory() as session:
                run = session.get_one(Run, self.run_id)
                if is_terminal(run.status) or run.status == RunStatus.QUEUED.value:
                    return f"run {self.run_id} was already {run.status}"
                attempt = (run.attempts or 0) + 1
                if attempt >= self.settings.max_attempts:
                    to, why = RunStatus.FAILED, f"gave up after {attempt} attempts: {reason}"
                    also: dict[str, Any] = {}
                else:
                    to, why = RunStatus.QUEUED, reason
                    last = session.scalar(select(LogChunk.data).where(LogChunk.run_id == self.run_id).order_by(LogChunk.offset.desc()).limit(1))
                    note = ("" if not last or last.endswith("\n") else "\n") + f"caddie: attempt {attempt} ended ({' '.join(reason.split())}); queued for attempt {attempt + 1}\n"
                    log_bytes = int(run.log_bytes or 0)
                    session.add(LogChunk(run_id=self.run_id, offset=log_bytes, data=note, created_at=utcnow(), attempt=attempt))
                    also = {"launch_handle": None, "cluster_id": None, "worker_task_id": None, "log_bytes": log_bytes + len(note.encode("utf-8"))}
                try:
                    transition(session, run, to, actor=ACTOR, reason=why, owner=self.token, also=also)
                    session.commit()
                except (IllegalTransition, IntegrityError) as exc:
                    session.rollback()
                    return f"run {self.run_id}: {exc}"
            return f"run {self.run_id} {to.value}: {why}"

        return self._db(move, "requeue")

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
                cluster = self._cluster_handle(session, run)
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

    # --- clusters -------------------------------------------------------------------------------
    def _cluster_handle(self, session: Session, run: Run) -> ClusterHandle | None:
        if run.cluster_id is None:
            return None
        row = session.get(Cluster, run.cluster_id)
        return ClusterHandle.from_json(row.handle) if row is not None and row.handle else None

    def _acquire(self, hardware: str) -> ClusterHandle:
        """A node from the launcher, claimed in the DB. A warm cluster is one run's at a time:
        if another run claimed it first, ask the launcher again without it."""
        taken: list[str] = []
        for _ in range(3):
            cluster = self.launcher.acquire(self.run_id, hardware, exclude=tuple(taken)) if taken else self.launcher.acquire(self.run_id, hardware)
            if self._db(lambda: self._claim_cluster(cluster), "claim its cluster"):
                return cluster
            log.info("run %s: cluster %s was claimed by another run meanwhile", self.run_id, cluster.name)
            taken.append(cluster.name)
        raise RetryLater(f"every warm cluster offered ({', '.join(taken)}) was claimed by another run meanwhile")

    def _claim_cluster(self, cluster: ClusterHandle) -> bool:
        """Record `cluster` as this run's, in one commit with runs.cluster_id.

        A reused (warm) cluster is a claim: its row is locked (SELECT ... FOR UPDATE),
        then taken only if no other active run owns or uses it. Two runs that saw
        the same idle cluster queue on the lock, and the second sees the first's
        claim. False: another run has it.
        """
        exclusive = bool(cluster.data.get("reused"))
        for _ in range(3):  # two runs may record the same new cluster at once
            now = utcnow()
            with self.session_factory() as session:
                row = session.scalar(select(Cluster).where(Cluster.name == cluster.name).with_for_update())
                if row is None:
                    row = Cluster(name=cluster.name, launcher=cluster.launcher, hardware=cluster.hardware, status="UP", created_at=now)
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
                row.status, row.handle, row.owner_run_id = "UP", cluster.to_json(), self.run_id
                row.last_used_at, row.idle_since = now, None
                session.flush()
                session.execute(update(Run).where(Run.id == self.run_id).values(cluster_id=row.id), execution_options={"synchronize_session": False})
                session.commit()
                return True
        raise RuntimeError(f"could not record cluster {cluster.name!r}")

    def _release(self, cluster: ClusterHandle | None) -> None:
        if cluster is None:
            return
        keep_warm = self.settings.keep_warm_minutes > 0
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
                    row.status = "IDLE" if keep_warm else "DOWN"
                    row.idle_since = now
                session.commit()

        self._db(write, "release its cluster")

    # --- small reads -------------------------------------------------------------------------------
    def _run_state(self) -> Any:
        with self.session_factory() as session:
            return session.execute(select(Run.status, Run.cancel_requested_at, Run.started_at).where(Run.id == self.run_id)).first()

    def _cancel_requested(self) -> bool:
        row = self._db(self._run_state, "read its state")
        return row is not None and row.cancel_requested_at is not None


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _result_values(result: dict[str, Any] | None, parser: LogParser) -> dict[str, Any]:
    """Result columns from result.json; from the log's summary lines when it is missing."""
    if result is None:
        return parser.summary.columns()
    values: dict[str, Any] = {"result": result}
    for key, column in RESULT_COLUMNS.items():
        if result.get(key) is not None:
            values[column] = result[key]
    return values
