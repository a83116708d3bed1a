"""The real executor killed (SIGKILL, in a subprocess) right after each of its commits, then a
fresh one: every run still ends exactly once, with one launch, on PostgreSQL with the local launcher.

The subprocess counts the commits of its main thread (the lease's heartbeat thread
is left out) and kills itself right after commit K. K runs from 1 until an executor
gets through every commit of a run; each K gets a run of its own. After the kill,
the janitor dispatches the run again once its heartbeat is stale, and a fresh
executor (in this process) takes it from wherever the dead one left it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select

from service.core.db import get_sessionmaker
from service.core.models import LogChunk, Run, RunEvent
from service.core.settings import Settings
from service.core.status import TERMINAL
from service.core.storage import LocalArtifactStore
from service.runs.logs import archive_row, whole_log
from service.teams.accounts import create_team, create_user
from tests.fresh_db import fresh_database
from tests.worker.run.test_executor import STAND_IN, new_run
from worker.control.janitor import janitor_pass
from worker.launchers.local import LocalLauncher
from worker.run.executor import execute_run

REPO = Path(__file__).resolve().parents[3]
STAND_IN_LOG = ("seed:5 data:./data/datasets/fineweb10B_sp8192\n"
                "step:1/2 train_loss:5.5000 train_time:10ms step_avg:10.00ms\n"
                "step:2/2 val_loss:4.2000 val_bpb:2.5000 train_time:20ms step_avg:10.00ms\n")  # fmt: skip

CRASHING_EXECUTOR = r"""
import os, signal, sys, threading
from sqlalchemy import event
from sqlalchemy.orm import Session
from service.core.storage import LocalArtifactStore
from service.core.db import get_sessionmaker
from worker.run.executor import execute_run
from worker.launchers.local import LocalLauncher
from service.core.settings import Settings

url, settings_json, run_id, crash_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = Settings.model_validate_json(settings_json)
commits = 0

@event.listens_for(Session, "after_commit")
def _count(session):
    global commits
    if threading.current_thread() is not threading.main_thread():
        return  # the lease's heartbeat
    commits += 1
    if commits == crash_after:
        os.kill(os.getpid(), signal.SIGKILL)  # right after commit K, the hard way

maker = get_sessionmaker(url)
out = execute_run(run_id, launcher=LocalLauncher(settings), session_factory=maker,
                  store=LocalArtifactStore(settings.home / "artifacts"), settings=settings)
print(f"commits:{commits} {out}", flush=True)
"""


@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        maker = get_sessionmaker(url)
        with maker() as s:
            create_team(s, "crash")
            create_user(s, "crash")
            s.commit()
        yield maker, url


def state_of(maker, run_id: int) -> tuple[str, bool]:
    with maker() as s:
        run = s.get(Run, run_id)
        return run.status, run.launch_handle is not None


def recover(maker, settings: Settings, run_id: int, limit_s: float = 60) -> list[str]:
    """What the deployment does after a worker died: janitor rounds, and an executor for each message."""
    outcomes: list[str] = []
    end = time.monotonic() + limit_s
    while state_of(maker, run_id)[0] not in {s.value for s in TERMINAL}:
        assert time.monotonic() < end, f"run {run_id} stuck in {state_of(maker, run_id)} after {len(outcomes)} executors: {outcomes[-2:]}"
        sent: list[int] = []
        with maker() as s:
            janitor_pass(s, launcher=LocalLauncher(settings), settings=settings, enqueue=sent.append)
        for rid in sent:
            outcomes.append(
                execute_run(rid, launcher=LocalLauncher(settings), session_factory=maker, store=LocalArtifactStore(settings.home / "artifacts"),
                            settings=settings)  # fmt: skip
            )
        time.sleep(0.1)
    return outcomes


def test_the_run_ends_exactly_once_whichever_commit_the_executor_dies_after(maker, tmp_path: Path) -> None:
    maker, url = maker
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    settings = Settings(
        home=tmp_path, trainer_command=[sys.executable, str(script)], gpu_count=0, heartbeat_s=0.2, stale_heartbeats=2,
        poll_interval_s=0.05, cancel_grace_s=1.0, max_attempts=3, janitor_tick_s=0.2,
    )  # fmt: skip
    seen_states: dict[int, tuple[str, bool]] = {}
    k = 0
    while True:
        k += 1
        assert k < 40, "the executor never got through a run"
        run_id = new_run(maker, owner="crash")
        crashed = subprocess.run(
            [sys.executable, "-c", CRASHING_EXECUTOR, url, settings.model_dump_json(), str(run_id), str(k)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if crashed.returncode == 0:
            assert f"run {run_id} SUCCEEDED" in crashed.stdout, crashed.stdout + crashed.stderr
            break  # K is past the last commit: every crash point has been tried
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        seen_states[k] = state_of(maker, run_id)
        outcomes = recover(maker, settings, run_id)

        with maker() as s:
            run = s.get(Run, run_id)
            events = [(e.from_status, e.to_status) for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id))]
            terminal = [e for e in events if e[1] in {t.value for t in TERMINAL}]
            where = f"crash after commit {k} in {seen_states[k]}; events {events}; recovery {outcomes}"
            assert run.status == "SUCCEEDED" and terminal == [("RUNNING", "SUCCEEDED")], where  # ends once, legally
            assert events.count(("PROVISIONING", "RUNNING")) == 1 and run.attempts == 0, where
            assert run.started_at is not None and run.finished_at is not None and run.val_bpb == 2.5, where
            # Archived once, wherever the crash fell (between the store's write and the commit too).
            log = whole_log(s, run_id, LocalArtifactStore(settings.home / "artifacts")).decode()
            assert s.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 0, where
            assert archive_row(s, run_id) is not None, where
        attempts = list((settings.home / "runs" / str(run_id)).glob("attempt-*"))
        assert len(attempts) == 1, where  # launched once
        assert log == STAND_IN_LOG, where  # the log stored once, whole
        # The job's copy goes with the run's end; only a crash after the final commit leaves it (retention takes it).
        copy = attempts[0] / "stdout.log"
        assert not copy.exists() or (seen_states[k][0] == "SUCCEEDED" and copy.read_text() == log), where
        child = json.loads((attempts[0] / "child.json").read_text())
        assert not psutil.pid_exists(child["pid"]) or psutil.Process(child["pid"]).status() == psutil.STATUS_ZOMBIE

    # the crash points covered the interesting gaps: before the launch, with the job running, and after the end
    states = set(seen_states.values())
    assert ("PROVISIONING", False) in states and ("RUNNING", True) in states and ("SUCCEEDED", True) in states, seen_states
    assert k >= 6, seen_states
