"""The executor in-process on PostgreSQL with the real local launcher and a stand-in trainer."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import event, func, inspect, select

from service.core.db import get_sessionmaker
from service.core.models import Artifact, Cluster, LogChunk, Metric, Run, RunEvent, Team, User, utcnow
from service.core.settings import Settings
from service.core.storage import LocalArtifactStore
from service.results.rules import RunFacts, check_run
from service.runs.logs import whole_log
from service.teams.accounts import create_team, create_user
from tests.factories import add_queued_run
from tests.fresh_db import fresh_database
from worker.launchers.base import ClusterHandle, LaunchFailed, RetryLater
from worker.launchers.local import LocalLauncher
from worker.run.executor import execute_run

STAND_IN = r'''
import json, os, sys, time
out = os.environ["OUTPUT_DIR"]
print("seed:" + os.environ["SEED"] + " data:" + os.environ.get("DATA_PATH", ""), flush=True)
print("step:1/2 train_loss:5.5000 train_time:10ms step_avg:10.00ms", flush=True)
if os.environ.get("ITERATIONS") == "99":  # "sleep": wait to be stopped
    time.sleep(300)
if os.environ.get("ITERATIONS") == "98":  # "wait": finish once a file named go appears in the work dir
    while not os.path.exists("go"):
        time.sleep(0.05)
print("step:2/2 val_loss:4.2000 val_bpb:2.5000 train_time:20ms step_avg:10.00ms", flush=True)
with open(os.path.join(out, "model.int6.ptz"), "wb") as fh:
    fh.write(b"weights")
with open(os.path.join(out, "result.json"), "w") as fh:
    json.dump({"status": "succeeded", "val_bpb": 2.5, "val_loss": 4.2, "total_bytes": 1234, "steps": 2,
               "train_seconds": 0.02, "eval_seconds": 0.01, "val_tokens_scored": 99, "val_tokens_total": 99,
               "ttt_protocol": "none", "train_shards": ["fineweb_train_000000.bin"], "val_shards": ["fineweb_val_000000.bin"],
               "trainer_revision": "stand-in", "gpu_name": "cpu", "world_size": 1}, fh)
if os.environ.get("ITERATIONS") == "97":  # "linger": its result is written, then it is slow to exit
    time.sleep(300)
'''


@pytest.fixture(scope="module")
def maker():
    # A database of its own: dispatch and the executor look at every run.
    with fresh_database() as url:
        yield _maker(url)


def _maker(pg_url: str):
    maker = get_sessionmaker(pg_url)
    with maker() as s:
        create_team(s, "exec")
        create_user(s, "exec")
        s.commit()
    return maker


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return Settings(
        home=tmp_path, trainer_command=[sys.executable, str(script)], gpu_count=0, heartbeat_s=0.5, poll_interval_s=0.05,
        cancel_grace_s=1.0, max_attempts=2,
    )  # fmt: skip


def new_run(maker, spec: dict | None = None, track: str = "unlimited", owner: str = "exec") -> int:
    """A QUEUED run of the team and user named ``owner``, with its creation event."""
    with maker() as s:
        team = s.scalar(select(Team.id).where(Team.name == owner))
        user = s.scalar(select(User.id).where(User.name == owner))
        run = add_queued_run(s, team, user, name="x", spec=spec or {}, seed=5, track=track)
        s.commit()
        return run.id


def go(maker, settings: Settings, run_id: int, launcher=None) -> str:
    return execute_run(
        run_id, launcher=launcher or LocalLauncher(settings), session_factory=maker, store=LocalArtifactStore(settings.home / "artifacts"), settings=settings
    )


def events(maker, run_id: int) -> list[tuple[str | None, str]]:
    with maker() as s:
        return [(e.from_status, e.to_status) for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id))]


def test_a_run_succeeds_with_log_metrics_result_and_artifacts(maker, settings) -> None:
    run_id = new_run(maker, {"STACK": "2026-03-23"})  # the sp1024 data
    assert go(maker, settings, run_id) == f"run {run_id} SUCCEEDED"
    with maker() as s:
        run = s.get(Run, run_id)
        assert (run.val_bpb, run.artifact_bytes, run.steps, run.result["status"]) == (2.5, 1234, 2, "succeeded")
        log = whole_log(s, run_id, LocalArtifactStore(settings.home / "artifacts")).decode()
        assert log.startswith("seed:5 data:./data/datasets/fineweb10B_sp1024\n") and run.log_bytes == len(log.encode())
        # The log's one home once the run has ended: its archive (service.runs.logs), no chunks left.
        assert s.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 0
        kinds = sorted(a.kind for a in s.scalars(select(Artifact).where(Artifact.run_id == run_id)))
        assert kinds == ["log", "model", "result"]
    assert events(maker, run_id)[1:] == [("QUEUED", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
    assert go(maker, settings, run_id) == f"run {run_id} is already SUCCEEDED"  # a redelivered task does nothing
    with maker() as s:  # the run says what its team's compile cache held when its job started
        running = s.scalar(select(RunEvent.reason).where(RunEvent.run_id == run_id, RunEvent.to_status == "RUNNING"))
        assert "; compile cache: the team's, empty (its first job on this machine" in running, running


def test_rule_checks_land_with_the_figures_they_judge_in_one_commit(maker, settings) -> None:
    run_id = new_run(maker, track="10min_16mb")
    commits: list[set[str]] = []  # per commit of any session: the Run columns it changed
    pending: set[str] = set()

    def before_flush(session, _context, _instances) -> None:  # noqa: ANN001
        for obj in session.dirty:
            if isinstance(obj, Run):
                state = inspect(obj)
                pending.update(c for c in ("val_bpb", "artifact_bytes", "result", "checks", "checks_verdict", "status")
                               if state.attrs[c].history.has_changes())

    def after_commit(_session) -> None:  # noqa: ANN001
        if pending:
            commits.append(set(pending))
            pending.clear()

    event.listen(maker, "before_flush", before_flush)
    event.listen(maker, "after_commit", after_commit)
    try:
        assert go(maker, settings, run_id) == f"run {run_id} SUCCEEDED"
    finally:
        event.remove(maker, "before_flush", before_flush)
        event.remove(maker, "after_commit", after_commit)
    with maker() as s:
        run = s.get(Run, run_id)
        expected = check_run(RunFacts.from_result(track="10min_16mb", hardware="cpu", allow_noncompliant=False, result=run.result,
                                                    node=run.node_hardware))
        assert run.checks == [c.to_dict() for c in expected]
        verdicts = {c["rule"]: c["verdict"] for c in run.checks}
        assert verdicts == {"artifact_bytes": "pass", "train_time": "not_comparable", "eval_time": "not_comparable", "full_val": "pass",
                            "ttt_protocol": "pass", "no_val_in_train": "not_comparable", "code_revision": "fail"}
        # a cpu run is never judged on the clock; the trainer's result.json has no content fingerprints and
        # only a git commit without a hash of the code that ran (rules judge what the run did, issue 19)
        assert run.checks_verdict == "fail"
    # The figures and the checks were written by one commit, never one without the other.
    with_figures = [c for c in commits if {"val_bpb", "result"} & c]
    assert with_figures and all({"checks", "checks_verdict"} <= c for c in with_figures), commits
    assert [c for c in commits if "checks" in c] == with_figures


def test_a_second_executor_backs_off_while_the_first_holds_the_lease(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 99})
    first = threading.Thread(target=go, args=(maker, settings, run_id))
    first.start()
    try:
        end = time.monotonic() + 20
        while (s := maker()).get(Run, run_id).status != "RUNNING":
            s.close()
            assert time.monotonic() < end
            time.sleep(0.05)
        assert "another worker" in go(maker, settings, run_id)
    finally:
        with maker() as s:
            s.get(Run, run_id).cancel_requested_at = utcnow()
            s.commit()
        first.join(20)
    with maker() as s:
        assert s.get(Run, run_id).status == "CANCELLED"
    assert len(list((settings.home / "runs" / str(run_id)).glob("attempt-*"))) == 1


def test_a_cancel_after_the_result_was_written_keeps_the_result(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 97})
    worker = threading.Thread(target=go, args=(maker, settings, run_id))
    worker.start()
    end = time.monotonic() + 20
    while not list((settings.home / "runs" / str(run_id)).glob("attempt-*/out*/result.json")) and not list(
        (settings.home / "runs" / str(run_id)).glob("attempt-*/**/result.json")
    ):
        assert time.monotonic() < end, "the stand-in wrote no result.json"
        time.sleep(0.05)
    with maker() as s:
        s.get(Run, run_id).cancel_requested_at = utcnow()
        s.commit()
    worker.join(30)
    with maker() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.val_bpb) == ("SUCCEEDED", 2.5), run.status_reason
        assert "result is kept" in run.status_reason


class Died(BaseException):
    """The executor's process dying (SIGKILL, OOM) right after the launcher started the job."""


class DiesAfterSubmit(LocalLauncher):
    def submit(self, cluster, job):  # noqa: ANN001, ANN201
        super().submit(cluster, job)
        raise Died


def test_an_executor_dead_between_submit_and_record_is_followed_by_one_that_adopts_its_job(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 98})  # trains until a file named go appears
    with pytest.raises(Died):
        go(maker, settings, run_id, launcher=DiesAfterSubmit(settings))
    with maker() as s:
        assert (s.get(Run, run_id).status, s.get(Run, run_id).launch_handle) == ("PROVISIONING", None)  # nothing recorded
    outcome: list[str] = []

    def second() -> None:
        while "another worker" in (out := go(maker, settings, run_id)):
            time.sleep(0.2)  # the dead executor's lease goes stale
        outcome.append(out)

    worker = threading.Thread(target=second)
    worker.start()
    end = time.monotonic() + 20
    while (s := maker()).get(Run, run_id).status != "RUNNING":
        s.close()
        assert time.monotonic() < end
        time.sleep(0.05)
    [workdir] = (settings.home / "runs" / str(run_id)).glob("attempt-*")  # no second trainer
    (workdir / "go").touch()
    worker.join(30)
    assert outcome == [f"run {run_id} SUCCEEDED"]
    assert len(list((settings.home / "runs" / str(run_id)).glob("attempt-*"))) == 1
    with maker() as s:
        reason = s.scalar(select(RunEvent.reason).where(RunEvent.run_id == run_id, RunEvent.to_status == "RUNNING"))
    assert reason.startswith(f"adopted job {run_id}/attempt-1 on ")


class FailsToLaunch(LocalLauncher):
    """A cloud launcher whose provisioning fails: a new cluster of the run's own."""

    def acquire(self, run_id, hardware, exclude=(), team_id=None):  # noqa: ANN001, ANN201
        return ClusterHandle(launcher="local", name=f"never-up-{run_id}", hardware=hardware, data={"reused": False})

    def submit(self, cluster, job):  # noqa: ANN001, ANN201
        raise LaunchFailed("Failed to provision all possible launchable resources")


def test_a_failed_launch_leaves_no_cluster_row(maker, settings) -> None:
    run_id = new_run(maker)
    out = go(maker, settings, run_id, launcher=FailsToLaunch(settings))
    assert "launch failed: Failed to provision" in out
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and run.cluster_id is None
        assert s.scalar(select(Cluster).where(Cluster.name == f"never-up-{run_id}")) is None


def test_hard_timeout_stops_the_job_and_fails_the_run(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 99})
    t0 = time.monotonic()
    out = go(maker, settings.model_copy(update={"hard_timeout_s": 1.5}), run_id)
    assert "hard timeout" in out and time.monotonic() - t0 < 10
    [workdir] = (settings.home / "runs" / str(run_id)).glob("attempt-*")
    child = json.loads((workdir / "child.json").read_text())
    assert not psutil.pid_exists(child["pid"]) or psutil.Process(child["pid"]).status() == psutil.STATUS_ZOMBIE
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and "hard timeout" in run.status_reason


def test_a_silent_trainer_is_stopped_by_the_watchdog_and_the_run_shows_its_limits(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 99, "MAX_WALLCLOCK_SECONDS": 120})
    t0 = time.monotonic()
    out = go(maker, settings.model_copy(update={"silence_timeout_s": 1.5}), run_id)
    assert "silent: no output for" in out and time.monotonic() - t0 < 15
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and "CADDIE_SILENCE_TIMEOUT_S=2" in run.status_reason
        started = s.scalar(select(RunEvent.reason).where(RunEvent.run_id == run_id, RunEvent.to_status == "RUNNING"))
    # Its own deadline: 120 s of training + 600 s of evaluation + 300 s overhead, and the watchdog.
    assert "deadline 1020 s (training 120 s + evaluation 600 s + overhead 300 s)" in started
    assert "stopped after 2 s without output" in started


def test_a_bad_stored_spec_fails_with_the_knob_named(maker, settings) -> None:
    run_id = new_run(maker, {"NUM_LAYERS": -3})
    go(maker, settings, run_id)
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and "NUM_LAYERS" in run.status_reason


class NoCapacityLauncher(LocalLauncher):
    """The local launcher on a machine that is full: every acquire says retry later."""

    def acquire(self, run_id: int, hardware: str, exclude=(), team_id=None) -> ClusterHandle:  # noqa: ANN001
        raise RetryLater("no capacity")


def test_retry_later_requeues_until_attempts_run_out(maker, settings) -> None:
    run_id = new_run(maker)
    assert "QUEUED" in go(maker, settings, run_id, NoCapacityLauncher(settings))
    with maker() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.attempts) == ("QUEUED", 1)
    assert "gave up after 2 attempts" in go(maker, settings, run_id, NoCapacityLauncher(settings))
    with maker() as s:
        assert s.get(Run, run_id).status == "FAILED"


def test_a_job_killed_behind_the_workers_back_is_requeued(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 99})
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(go(maker, settings, run_id)))
    t.start()
    runs = settings.home / "runs" / str(run_id)
    end = time.monotonic() + 20
    while not list(runs.glob("attempt-*/child.json")) or b"step:1/2" not in next(runs.glob("attempt-*/stdout.log")).read_bytes():
        assert time.monotonic() < end
        time.sleep(0.05)
    [workdir] = runs.glob("attempt-*")
    with maker() as s:
        handle = s.get(Run, run_id).launch_handle
    os.killpg(handle["data"]["pgid"], signal.SIGKILL)  # the wrapper: no exit code gets written
    os.killpg(json.loads((workdir / "child.json").read_text())["pgid"], signal.SIGKILL)
    t.join(20)
    assert result and "QUEUED" in result[0], result
    with maker() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.attempts, run.launch_handle) == ("QUEUED", 1, None)
        # the attempt's log and metrics stay, and the log says the next attempt follows
        chunks = list(s.execute(select(LogChunk.attempt, LogChunk.data).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)))
        log = "".join(d for _, d in chunks)
        assert log.startswith("seed:5") and "step:1/2 train_loss:5.5000" in log
        assert log.endswith("caddie: attempt 1 ended (node lost: trainer process %s is gone and left no exit code); queued for attempt 2 (no checkpoint: it starts again from step 0)\n" % handle["data"]["pid"])
        assert {a for a, _ in chunks} == {1} and run.log_bytes == len(log.encode())
        assert [(m.attempt, m.step) for m in s.scalars(select(Metric).where(Metric.run_id == run_id))] == [(1, 1)]


class BrokenWrapperLauncher(LocalLauncher):
    @property
    def idle_s(self):  # noqa: ANN201
        return "lots"  # the job wrapper refuses its own argument: it dies before any job, as a wrapper that cannot import does


def test_a_job_wrapper_that_dies_saying_why_fails_the_run_once_not_as_a_lost_node(maker, settings) -> None:
    # Found on a GPU machine where caddie's packages were on PYTHONPATH only: the wrapper could not import
    # `worker` in the job's env, and the run was retried 4 times as "trainer process gone and left no exit code".
    run_id = new_run(maker, {"ITERATIONS": 2})
    assert "FAILED" in go(maker, settings, run_id, BrokenWrapperLauncher(settings))
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and "queued for attempt" not in "".join(s.scalars(select(LogChunk.data).where(LogChunk.run_id == run_id)))
        assert run.status_reason.startswith("caddie's job wrapper failed: ") and "--idle-s: invalid float value: 'lots'" in run.status_reason


class WarmClusterLauncher(LocalLauncher):
    """The local launcher offering a cluster that it says an earlier run kept warm (as SkyPilot's idle check does)."""

    def acquire(self, run_id: int, hardware: str, exclude=(), team_id=None) -> ClusterHandle:  # noqa: ANN001
        return ClusterHandle("local", "kept-warm", hardware, {"reused": True})


def test_a_run_on_a_reused_warm_cluster_is_marked_warm_and_a_provisioned_one_is_not(maker, settings) -> None:
    cold, warm = new_run(maker), new_run(maker)
    assert go(maker, settings, cold) == f"run {cold} SUCCEEDED"
    assert go(maker, settings, warm, launcher=WarmClusterLauncher(settings)) == f"run {warm} SUCCEEDED"
    with maker() as s:
        assert (s.get(Run, cold).warm_start, s.get(Run, warm).warm_start) == (False, True)
        assert s.get(Run, warm).cluster.name == "kept-warm"  # claimed through the warm-cluster row lock
        # Written by the RUNNING transition itself: its event says so.
        running = s.scalar(select(RunEvent.reason).where(RunEvent.run_id == warm, RunEvent.to_status == "RUNNING"))
        assert "(a warm cluster, reused); deadline " in running


def test_a_job_stopped_by_its_machine_ends_cancelled_with_what_it_had_logged(maker, settings) -> None:
    """caddie up's Ctrl-C stops every job of the machine (LocalLauncher.stop_all): the run says why, and keeps
    the figures its log had (the 04-09 record's GPU run showed none after 150 steps)."""
    run_id = new_run(maker, {"ITERATIONS": 99})
    worker = threading.Thread(target=go, args=(maker, settings, run_id))
    worker.start()
    end = time.monotonic() + 20
    while not (metrics := _metric_count(maker, run_id)):
        assert time.monotonic() < end, "the stand-in logged no step"
        time.sleep(0.05)
    assert LocalLauncher(settings).stop_all("stopped when caddie up was stopped (Ctrl-C)") == 1
    worker.join(30)
    with maker() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.status_reason) == ("CANCELLED", "stopped when caddie up was stopped (Ctrl-C)")
        assert run.steps == 1 and metrics >= 1


def _metric_count(maker, run_id: int) -> int:
    with maker() as s:
        return s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id)) or 0
