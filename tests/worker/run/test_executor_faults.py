"""The executor against faults, on PostgreSQL with the real local launcher and a stand-in trainer:
a dead job supervisor, a database that drops its connections, a launcher that keeps failing,
two runs reaching for one warm cluster."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, select, text

from service.core.models import Cluster, Run, RunEvent
from service.core.settings import Settings
from service.core.storage import LocalArtifactStore
from service.runs.logs import whole_log
from tests.fresh_db import fresh_database
from tests.worker.run.test_executor import _maker, events, go, new_run, settings  # noqa: F401 (fixture)
from worker.launchers.base import ClusterHandle, JobStatus, LaunchHandle
from worker.launchers.local import LocalLauncher
from worker.run.executor import RunDriver
from worker.run.lease import Lease


@pytest.fixture(scope="module")
def db():
    with fresh_database() as url:
        yield url, _maker(url)


@pytest.fixture()
def maker(db):
    return db[1]


def wait_for(predicate, limit: float = 20, what: str = "") -> None:  # noqa: ANN001
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def status_of(maker, run_id: int) -> str:  # noqa: ANN001
    with maker() as s:
        return s.get(Run, run_id).status


def start(maker, settings: Settings, run_id: int, launcher=None) -> tuple[threading.Thread, list[str]]:  # noqa: ANN001
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(go(maker, settings, run_id, launcher)), daemon=True)
    t.start()
    return t, out


def job_started(settings: Settings, run_id: int) -> Path:
    runs = settings.home / "runs" / str(run_id)
    wait_for(lambda: list(runs.glob("attempt-*/child.json")), what="the job")
    [workdir] = runs.glob("attempt-*")
    return workdir


def test_a_job_whose_supervisor_died_but_whose_trainer_finished_is_collected_not_run_again(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 98})
    t, out = start(maker, settings, run_id)
    workdir = job_started(settings, run_id)
    with maker() as s:
        handle = s.get(Run, run_id).launch_handle
    os.kill(handle["data"]["pid"], signal.SIGKILL)  # only the wrapper: no exit code will be written
    (workdir / "go").touch()  # the trainer carries on and finishes
    t.join(30)
    assert out == [f"run {run_id} SUCCEEDED"], out
    assert not (workdir / "exit_code.json").exists()
    with maker() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.attempts, run.val_bpb, run.artifact_bytes) == ("SUCCEEDED", 0, 2.5, 1234)
        assert "supervisor vanished" in run.status_reason
        assert whole_log(s, run_id, LocalArtifactStore(settings.home / "artifacts")).startswith(b"seed:5")
    assert len(list((settings.home / "runs" / str(run_id)).glob("attempt-*"))) == 1  # trained once
    assert events(maker, run_id)[-1] == ("RUNNING", "SUCCEEDED")


def test_a_database_that_drops_every_connection_mid_run_does_not_stop_the_driver(db, settings) -> None:
    url, maker = db
    run_id = new_run(maker, {"ITERATIONS": 98})
    t, out = start(maker, settings, run_id)
    workdir = job_started(settings, run_id)
    wait_for(lambda: status_of(maker, run_id) == "RUNNING", what="RUNNING")
    admin = create_engine(url)
    try:
        # A real transient error: PostgreSQL ends every other connection to the database
        # (the executor's pooled ones included), as on a failover or a restart.
        killed = []
        for _ in range(3):
            with admin.connect() as conn:
                killed.append(conn.execute(
                    text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
                ).scalar())  # fmt: skip
            time.sleep(0.3)
        assert killed[0] >= 1, killed
        (workdir / "go").touch()
        t.join(60)
        assert out == [f"run {run_id} SUCCEEDED"], out
        with admin.connect() as conn:
            assert conn.execute(text("SELECT status FROM runs WHERE id = :i"), {"i": run_id}).scalar() == "SUCCEEDED"
    finally:
        admin.dispose()
        maker.kw["bind"].dispose()  # the other tests get fresh connections


class BrokenStatusLauncher(LocalLauncher):
    """A launcher with a bug: status() raises what no launcher should."""

    def status(self, handle: LaunchHandle) -> JobStatus:
        raise RuntimeError("launcher bug")


def test_an_unexpected_launcher_error_is_retried_a_bounded_number_of_times_then_fails_the_run(maker, settings) -> None:
    run_id = new_run(maker, {"ITERATIONS": 99})
    broken = BrokenStatusLauncher(settings)
    outs = [go(maker, settings, run_id, broken) for _ in range(3)]  # max_driver_errors: 3 by default
    assert [o.split(" (")[0] for o in outs[:-1]] == [f"run {run_id}: driver error {n} of 3" for n in (1, 2)], outs
    assert outs[-1] == f"run {run_id} FAILED: gave up after 3 driver errors: RuntimeError: launcher bug"
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and run.status_reason.endswith("RuntimeError: launcher bug")
        reasons = list(s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id, RunEvent.from_status == RunEvent.to_status)))
        assert [r.split(":")[0] for r in reasons] == ["driver error 1 of 3", "driver error 2 of 3"]
    # the job was launched once and stopped when the run gave up
    [workdir] = (settings.home / "runs" / str(run_id)).glob("attempt-*")
    # Every process of the job (the wrapper, the trainer it may or may not have started by the
    # time the driver gave up) runs in the job's folder: none may be left.
    wait_for(lambda: not job_processes(workdir), what="the job to stop")


def job_processes(workdir: Path) -> list[psutil.Process]:
    """Live processes whose working directory is ``workdir``."""
    alive = []
    for p in psutil.process_iter(["cwd", "status"]):
        if p.info["cwd"] == str(workdir) and p.info["status"] != psutil.STATUS_ZOMBIE:
            alive.append(p)
    return alive


class WarmPoolLauncher(LocalLauncher):
    """One warm cluster that every acquire offers (as SkyPilot's idle check does until a job lands)."""

    def acquire(self, run_id: int, hardware: str, exclude=(), team_id=None) -> ClusterHandle:  # noqa: ANN001
        if "warm-1" not in exclude:
            return ClusterHandle("local", "warm-1", hardware, {"reused": True})
        return ClusterHandle("local", f"fresh-{run_id}", hardware, {"reused": False})


def driver(maker, settings: Settings, run_id: int) -> RunDriver:  # noqa: ANN001
    with maker() as s:
        run = s.get(Run, run_id)
        run.status = "PROVISIONING"
        s.commit()
    lease = Lease(maker, run_id, settings.heartbeat_s, 10)
    assert lease.claim()
    return RunDriver(run_id, WarmPoolLauncher(settings), maker, None, settings, lease)


def test_a_warm_cluster_is_claimed_by_one_run_only(maker, settings) -> None:
    a, b = new_run(maker), new_run(maker)
    da, db_ = driver(maker, settings, a), driver(maker, settings, b)
    assert da.clusters.acquire("cpu").name == "warm-1"
    assert db_.clusters.acquire("cpu").name == f"fresh-{b}"  # warm-1 is a's: b is offered another
    with maker() as s:
        owners = {c.name: c.owner_run_id for c in s.scalars(select(Cluster).where(Cluster.name.in_(["warm-1", f"fresh-{b}"])))}
        assert owners == {"warm-1": a, f"fresh-{b}": b}
        assert (s.get(Run, a).cluster_id, s.get(Run, b).cluster_id) == tuple(
            s.scalar(select(Cluster.id).where(Cluster.name == n)) for n in ("warm-1", f"fresh-{b}"))
    da.clusters.release(ClusterHandle("local", "warm-1", "cpu", {"reused": True}))  # a is done with it
    with maker() as s:
        s.get(Run, a).status = "SUCCEEDED"
        s.commit()
    c = new_run(maker)
    assert driver(maker, settings, c).clusters.acquire("cpu").name == "warm-1"  # free again


@pytest.mark.parametrize("trial", range(4))
def test_runs_racing_for_one_warm_cluster_get_it_once(maker, settings, trial: int) -> None:
    drivers = [driver(maker, settings, new_run(maker)) for _ in range(4)]
    warm = ClusterHandle("local", f"warm-race-{trial}", "cpu", {"reused": True})
    with maker() as s:
        s.add(Cluster(name=warm.name, launcher="local", hardware="cpu", status="IDLE", handle=warm.to_json()))
        s.commit()
    barrier = threading.Barrier(len(drivers))
    won: list[bool] = [False] * len(drivers)

    def claim(i: int) -> None:
        barrier.wait()
        won[i] = drivers[i].clusters.claim(warm)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(drivers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert sum(won) == 1, won
    with maker() as s:
        users = list(s.scalars(select(Run.id).where(Run.cluster_id == s.scalar(select(Cluster.id).where(Cluster.name == warm.name)))))
        assert users == [drivers[won.index(True)].run_id]
