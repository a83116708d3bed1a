"""Drive one run through a launcher, from dispatch to its final state.

    QUEUED/PROVISIONING ─ acquire a node, submit the trainer job, store the
    handles (before waiting on anything) ─▶ RUNNING ─ stream the log and its
    metrics into the DB, heartbeat, honour cancel and the hard timeout ─▶
    collect result.json and the artifact ─▶ release ─▶ SUCCEEDED | FAILED | CANCELLED

Safe to run twice for one run: the run's row carries a lease (worker_task_id,
renewed through heartbeat_at). A second executor for a run whose lease is
fresh returns at once; once the lease is stale (its worker died) a new
executor takes it over and, since the job's handle is stored, re-attaches to
the job instead of launching it again. A finished run is left alone.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.lifecycle import IllegalTransition, RunStatus, is_terminal, transition
from service.models import Artifact, Cluster, LogChunk, Metric, Run, utcnow
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
from worker.logparse import LogParser, parse_text

log = logging.getLogger(__name__)

ACTOR = "worker"
ACTIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)
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


def job_env(run: Run, settings: Any) -> dict[str, str]:
    """The trainer's environment for `run`: its knobs, its seed, and data paths.

    Raises ConfigError if the stored spec no longer validates (e.g. the trainer changed).
    """
    cfg = TrainerConfig.from_dict(dict(run.spec or {}))
    overrides = cfg.overrides()
    env = {k: v for k, v in cfg.to_env().items() if k in overrides}
    env["SEED"] = str(int(run.seed))
    if "DATA_PATH" not in env and settings.data_path:
        env["DATA_PATH"] = str(settings.data_path)
    if "TOKENIZER_PATH" not in env and settings.tokenizer_path:
        env["TOKENIZER_PATH"] = str(settings.tokenizer_path)
    return env


class Lease:
    """The right to drive one run: runs.worker_task_id = our token, kept alive by
    renewing runs.heartbeat_at from a background thread every heartbeat_s."""

    def __init__(self, session_factory: SessionFactory, run_id: int, heartbeat_s: float, stale_s: float) -> None:
        self.session_factory = session_factory
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self) -> bool:
        """Take the lease if nobody holds it or its holder stopped renewing it."""
        now = utcnow()
        with self.session_factory() as session:
            result = session.execute(
                update(Run)
                .where(
                    Run.id == self.run_id,
                    Run.status.in_(ACTIVE),
                    (Run.worker_task_id.is_(None)) | (Run.heartbeat_at.is_(None)) | (Run.heartbeat_at < now - timedelta(seconds=self.stale_s)),
                )
                .values(worker_task_id=self.token, heartbeat_at=now),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            return result.rowcount == 1

    def renew(self) -> bool:
        with self.session_factory() as session:
            result = session.execute(
                update(Run)
                .where(Run.id == self.run_id, Run.worker_task_id == self.token, Run.status.in_(ACTIVE))
                .values(heartbeat_at=utcnow()),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            return result.rowcount == 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-run-{self.run_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    self.lost.set()  # finished elsewhere or taken over: stop driving
                    return
            except Exception:  # noqa: BLE001 (a DB hiccup: try again next beat)
                log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)


def execute_run(run_id: int, *, launcher: Launcher, session_factory: SessionFactory, store: Any, settings: Any) -> str:
    """Drive run `run_id` to a final state (or hand it back to the queue); returns what happened, in words."""
    with session_factory() as session:
        run = session.get(Run, run_id)
        if run is None:
            return f"run {run_id} does not exist"
        if is_terminal(run.status):
            return f"run {run_id} is already {run.status}"
        if run.status == RunStatus.QUEUED.value:
            try:
                transition(session, run, RunStatus.PROVISIONING, actor=ACTOR, reason="picked up by a worker")
            except IllegalTransition:
                return f"run {run_id} changed state meanwhile"
            run.worker_task_id = None
            session.commit()
    lease = Lease(session_factory, run_id, settings.heartbeat_s, settings.heartbeat_s * settings.stale_heartbeats)
    if not lease.claim():
        return f"run {run_id} is being driven by another worker"
    lease.start()
    try:
        return RunDriver(run_id, launcher, session_factory, store, settings, lease).drive()
    finally:
        lease.stop()


class RunDriver:
    """One executor's pass over one run (holding its lease)."""

    def __init__(self, run_id: int, launcher: Launcher, session_factory: SessionFactory, store: Any, settings: Any, lease: Lease) -> None:
        self.run_id = run_id
        self.launcher = launcher
        self.session_factory = session_factory
        self.store = store
        self.settings = settings
        self.lease = lease
        self.parser = LogParser()
        self.offset = 0

    # --- the story ------------------------------------------------------------------------
    def drive(self) -> str:
        with self.session_factory() as session:
            run = session.get_one(Run, self.run_id)
            handle = LaunchHandle.from_json(run.launch_handle) if run.launch_handle else None
            cluster = self._cluster_handle(session, run)
            cancel_requested = run.cancel_requested_at is not None
            self.offset = int(run.log_bytes or 0)
        if handle is None:
            if cancel_requested:
                return self._finish(RunStatus.CANCELLED, "cancelled by user before launch", cluster=cluster)
            launched = self._launch()
            if isinstance(launched, str):
                return launched
            handle, cluster = launched
        else:
            log.info("run %s: re-attaching to job %s on %s", self.run_id, handle.job_id, handle.cluster)
        return self._follow(handle, cluster)

    def _launch(self) -> tuple[LaunchHandle, ClusterHandle] | str:
        with self.session_factory() as session:
            run = session.get_one(Run, self.run_id)
            hardware = run.hardware
            try:
                env, bad_config = job_env(run, self.settings), ""
            except ConfigError as exc:
                env, bad_config = {}, "; ".join(f"{i.field}: {i.message}" for i in exc.issues)
        if bad_config:
            return self._finish(RunStatus.FAILED, f"invalid trainer config: {bad_config}")
        try:
            cluster = self.launcher.acquire(self.run_id, hardware)
        except (RetryLater, LauncherUnreachable) as exc:
            return self._requeue(f"no node: {exc}")
        except LaunchFailed as exc:
            return self._finish(RunStatus.FAILED, f"cannot get a node: {exc}")
        self._record_cluster(cluster)
        if self._cancel_requested():
            return self._finish(RunStatus.CANCELLED, "cancelled by user before launch", cluster=cluster)
        job = JobSpec(run_id=self.run_id, env=env, hardware=hardware, timeout_s=float(self.settings.hard_timeout_s))
        try:
            handle = self.launcher.submit(cluster, job)
        except (RetryLater, LauncherUnreachable) as exc:
            return self._requeue(f"launch failed, will retry: {exc}", cluster=cluster)
        except LaunchFailed as exc:
            return self._finish(RunStatus.FAILED, f"launch failed: {exc}", cluster=cluster)
        # The handle is stored before anything else: a worker that dies from
        # here on leaves enough behind for the next one to re-attach.
        with self.session_factory() as session:
            session.execute(
                update(Run).where(Run.id == self.run_id).values(launch_handle=handle.to_json()), execution_options={"synchronize_session": False}
            )
            session.commit()
            run = session.get_one(Run, self.run_id)
            try:
                transition(session, run, RunStatus.RUNNING, actor=ACTOR, reason=f"job {handle.job_id} on {handle.cluster}")
                session.commit()
            except IllegalTransition:
                session.rollback()
                self.launcher.cancel(handle)
                return f"run {self.run_id} changed state during launch; job stopped"
        return handle, cluster

    def _follow(self, handle: LaunchHandle, cluster: ClusterHandle | None) -> str:
        poll = float(self.settings.poll_interval_s)
        while True:
            if self.lease.lost.is_set():
                return f"run {self.run_id}: lease lost, another worker drives it now"
            self._pull_log(handle, final=False)
            row = self._run_state()
            if row is None or is_terminal(row.status):
                return f"run {self.run_id} was finished elsewhere"
            if row.cancel_requested_at is not None:
                self.launcher.cancel(handle)
                self._pull_log(handle, final=True)
                return self._finish(RunStatus.CANCELLED, "cancelled by user", cluster=cluster)
            if row.started_at is not None and (utcnow() - row.started_at).total_seconds() > self.settings.hard_timeout_s:
                self.launcher.cancel(handle)
                self._pull_log(handle, final=True)
                self._store_outputs(handle)
                return self._finish(RunStatus.FAILED, f"hard timeout: still running after {self.settings.hard_timeout_s:.0f} s", cluster=cluster)
            try:
                status = self.launcher.status(handle)
            except LauncherUnreachable as exc:
                log.warning("run %s: launcher unreachable (%s); polling again", self.run_id, exc)
                time.sleep(max(poll, self.settings.heartbeat_s))
                continue
            except RetryLater as exc:
                self._pull_log(handle, final=True)
                return self._requeue(f"job lost: {exc}", cluster=cluster)
            if status.terminal:
                self._pull_log(handle, final=True)
                return self._conclude(handle, cluster, status)
            time.sleep(poll)

    def _conclude(self, handle: LaunchHandle, cluster: ClusterHandle | None, status: JobStatus) -> str:
        if status.state is JobState.LOST:
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

    # --- log streaming ------------------------------------------------------------------------
    def _pull_log(self, handle: LaunchHandle, final: bool) -> None:
        """Copy new log bytes into log_chunks (and parsed metrics into metrics), one transaction per read."""
        while True:
            try:
                data = self.launcher.read_log(handle, self.offset)
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
            with self.session_factory() as session:
                session.add(LogChunk(run_id=self.run_id, offset=self.offset, data=text, created_at=utcnow()))
                session.add_all(
                    Metric(run_id=self.run_id, kind=p.kind, step=p.step, train_loss=p.train_loss, val_loss=p.val_loss, val_bpb=p.val_bpb, elapsed_ms=p.elapsed_ms)
                    for p in points
                )
                session.execute(
                    update(Run).where(Run.id == self.run_id).values(log_bytes=self.offset + n), execution_options={"synchronize_session": False}
                )
                try:
                    session.commit()
                except IntegrityError:
                    # This offset is already stored (an earlier executor got this far
                    # and died before remembering it); skip ahead.
                    session.rollback()
            self.offset += n
            if n < len(data):
                break  # the rest is an unfinished line

    # --- outputs -----------------------------------------------------------------------------
    def _store_outputs(self, handle: LaunchHandle) -> dict[str, Any] | None:
        """Collect the job's files: result.json into the run's columns, every output file into the store."""
        with tempfile.TemporaryDirectory(prefix=f"caddie-run-{self.run_id}-") as tmp:
            try:
                outdir = self.launcher.collect(handle, Path(tmp))
            except (LaunchFailed, RetryLater, LauncherUnreachable) as exc:
                log.warning("run %s: could not collect outputs: %s", self.run_id, exc)
                return None
            result = _read_result(outdir / "result.json")
            stored = []
            for filename, kind in OUTPUT_FILES:
                path = outdir / filename
                if path.is_file():
                    uri, size, sha = self.store.put(self.run_id, kind, path)
                    stored.append(Artifact(run_id=self.run_id, kind=kind, uri=uri, bytes=size, sha256=sha, created_at=utcnow()))
        if result is None and self.parser.summary.final is None:
            self._fill_from_log()
        with self.session_factory() as session:
            session.execute(delete(Artifact).where(Artifact.run_id == self.run_id))  # a second collect replaces the first
            session.add_all(stored)
            values = _result_values(result, self.parser)
            if values:
                run = session.get_one(Run, self.run_id)
                for column, value in values.items():
                    setattr(run, column, value)
                judge_run(run)  # the rule checks land with the figures they judge, in one commit
            session.commit()
        return result

    def _fill_from_log(self) -> None:
        # A re-attached executor has not seen the early log; parse what the DB holds.
        with self.session_factory() as session:
            text = "".join(session.scalars(select(LogChunk.data).where(LogChunk.run_id == self.run_id).order_by(LogChunk.offset)))
        _, self.parser.summary = parse_text(text)

    # --- endings -------------------------------------------------------------------------------
    def _finish(self, to: RunStatus, reason: str, *, cluster: ClusterHandle | None = None) -> str:
        self._release(cluster)
        with self.session_factory() as session:
            run = session.get_one(Run, self.run_id)
            if is_terminal(run.status):
                return f"run {self.run_id} was already {run.status}"
            try:
                transition(session, run, to, actor=ACTOR, reason=reason)
                session.commit()
            except IllegalTransition as exc:
                session.rollback()
                return f"run {self.run_id}: {exc}"
        return f"run {self.run_id} {to.value}" + (f": {reason}" if reason else "")

    def _requeue(self, reason: str, *, cluster: ClusterHandle | None = None) -> str:
        """Back to the queue for another attempt (attempts+1), or FAILED once attempts run out."""
        self._release(cluster)
        with self.session_factory() as session:
            run = session.get_one(Run, self.run_id)
            if is_terminal(run.status):
                return f"run {self.run_id} was already {run.status}"
            if (run.attempts or 0) + 1 >= self.settings.max_attempts:
                to, why = RunStatus.FAILED, f"gave up after {run.attempts + 1} attempts: {reason}"
            else:
                to, why = RunStatus.QUEUED, reason
            try:
                transition(session, run, to, actor=ACTOR, reason=why)
            except IllegalTransition as exc:
                session.rollback()
                return f"run {self.run_id}: {exc}"
            if to is RunStatus.QUEUED:
                run.launch_handle = None
                run.cluster_id = None
                run.worker_task_id = None
                run.log_bytes = 0
                session.execute(delete(LogChunk).where(LogChunk.run_id == self.run_id))
                session.execute(delete(Metric).where(Metric.run_id == self.run_id))
            session.commit()
        return f"run {self.run_id} {to.value}: {why}"

    # --- clusters -------------------------------------------------------------------------------
    def _cluster_handle(self, session: Session, run: Run) -> ClusterHandle | None:
        if run.cluster_id is None:
            return None
        row = session.get(Cluster, run.cluster_id)
        return ClusterHandle.from_json(row.handle) if row is not None and row.handle else None

    def _record_cluster(self, cluster: ClusterHandle) -> None:
        for _ in range(3):  # two runs may record the same new cluster at once
            now = utcnow()
            with self.session_factory() as session:
                row = session.scalar(select(Cluster).where(Cluster.name == cluster.name))
                if row is None:
                    row = Cluster(name=cluster.name, launcher=cluster.launcher, hardware=cluster.hardware, status="UP", created_at=now)
                    session.add(row)
                row.status, row.handle, row.owner_run_id = "UP", cluster.to_json(), self.run_id
                row.last_used_at, row.idle_since = now, None
                try:
                    session.flush()
                    session.execute(update(Run).where(Run.id == self.run_id).values(cluster_id=row.id), execution_options={"synchronize_session": False})
                    session.commit()
                    return
                except IntegrityError:
                    session.rollback()
        raise RuntimeError(f"could not record cluster {cluster.name!r}")

    def _release(self, cluster: ClusterHandle | None) -> None:
        if cluster is None:
            return
        keep_warm = self.settings.keep_warm_minutes > 0
        try:
            self.launcher.release(cluster, keep_warm=keep_warm)
        except Exception as exc:  # noqa: BLE001 (the janitor tears down what is left)
            log.warning("run %s: releasing %s failed: %s", self.run_id, cluster.name, exc)
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

    # --- small reads -------------------------------------------------------------------------------
    def _run_state(self) -> Any:
        with self.session_factory() as session:
            return session.execute(select(Run.status, Run.cancel_requested_at, Run.started_at).where(Run.id == self.run_id)).first()

    def _cancel_requested(self) -> bool:
        row = self._run_state()
        return row is not None and row.cancel_requested_at is not None


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _result_values(result: dict[str, Any] | None, parser: LogParser) -> dict[str, Any]:
    """Result columns from result.json; from the log's summary lines when it is missing."""
    if result is not None:
        values: dict[str, Any] = {"result": result}
        for key, column in RESULT_COLUMNS.items():
            if result.get(key) is not None:
                values[column] = result[key]
        return values
    s = parser.summary
    values = {}
    if s.final:
        values.update(val_bpb=s.final["val_bpb"], val_loss=s.final["val_loss"])
    if s.total_bytes is not None:
        values["artifact_bytes"] = s.total_bytes
    if s.code_bytes is not None:
        values["code_bytes"] = s.code_bytes
    if s.last_step is not None:
        values["steps"] = s.last_step
    if s.peak_memory_allocated_mib is not None:
        values["peak_memory_mib"] = s.peak_memory_allocated_mib
    return values
