"""A node lost mid-run on SkyPilot (issue 21 item 7): the real executor on PostgreSQL with the real
SkyPilot launcher over the API stand-in of the launcher's tests. A preempted node (the job's driver
died: FAILED_DRIVER) is torn down at once, never kept warm; the run goes back to the queue and its next
attempt is a new launch, under its own launch key, from step 0; both attempts are in the run's events,
its log and its bill."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("sky")
import sky  # noqa: E402

from service.billing.accounting import Transition, billed_attempts  # noqa: E402
from service.core.models import Cluster, Run, RunEvent, utcnow  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.storage import LocalArtifactStore  # noqa: E402
from service.runs.attempts import run_attempts  # noqa: E402
from service.runs.logs import whole_log  # noqa: E402
from tests.worker.launchers.test_skypilot_launcher import SkyApiStandIn  # noqa: E402
from tests.worker.run.test_executor import go, maker, new_run  # noqa: E402, F401 (maker: the fixture)
from tests.worker.run.test_skypilot_adoption import node_with_outputs  # noqa: E402
from worker.launchers.skypilot import SkyPilotLauncher  # noqa: E402


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    # keep_warm on: a healthy run's node would be kept warm; a lost one must not be
    return Settings(home=tmp_path, launcher="skypilot", heartbeat_s=0.5, poll_interval_s=0.05, keep_warm_minutes=10, max_attempts=3)


def launches(api: SkyApiStandIn) -> list[tuple[str, str]]:
    """(cluster, job name) of each sky.launch so far."""
    return [(kw["cluster_name"], task.name) for name, (task, *_), kw in api.calls if name == "launch"]


def launch_requests(api: SkyApiStandIn) -> list[str]:
    return [i for i, r in list(api.requests.items()) if r["name"] == "launch"]


def in_thread(fn) -> tuple[threading.Thread, list[str]]:  # noqa: ANN001
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def wait_for(what, cond, t: threading.Thread, timeout_s: float = 20) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end and t.is_alive(), f"waited for {what}"
        time.sleep(0.05)


def test_a_preempted_node_is_torn_down_and_the_run_relaunched_on_a_fresh_one(maker, settings, tmp_path: Path) -> None:  # noqa: F811
    api = SkyApiStandIn()
    sky_launcher = SkyPilotLauncher(settings, sdk=api, min_poll_s=0)
    run_id = new_run(maker)

    # attempt 1: provisioned, trains, then its spot node is preempted (SkyPilot: FAILED_DRIVER)
    t, out = in_thread(lambda: go(maker, settings, run_id, launcher=sky_launcher))
    wait_for("the first launch", lambda: launch_requests(api), t)
    [(first_cluster, first_job)] = launches(api)
    assert first_job == f"caddie-run-{run_id}-attempt-1"
    [rid] = launch_requests(api)
    api.clusters.append({"name": first_cluster, "status": sky.ClusterStatus.UP})
    api.log = "step:1/2 train_loss:5.5000 train_time:10ms step_avg:10.00ms\n"
    api.finish(rid)

    def running() -> bool:
        with maker() as s:
            return s.get_one(Run, run_id).status == "RUNNING"

    wait_for("RUNNING", running, t)
    api.logs_dir = tmp_path / "empty-logs"  # a preempted node hands nothing back
    api.logs_dir.mkdir()
    api.job_statuses[3] = sky.JobStatus.FAILED_DRIVER
    t.join(30)
    assert out and out[0].startswith(f"run {run_id} QUEUED: node lost: the job's driver died: the node was preempted or failed"), out
    assert ("down", (first_cluster,), {}) in api.calls and not [c for c in api.calls if c[0] == "autostop"]  # torn down, not kept warm
    with maker() as s:
        run = s.get_one(Run, run_id)
        assert (run.attempts, run.launch_handle, run.cluster_id) == (1, None, None)
        assert s.scalar(select(Cluster.status).where(Cluster.name == first_cluster)) == "DOWN"

    # attempt 2: a launch of its own (its own key), from step 0, to the end
    t, out = in_thread(lambda: go(maker, settings, run_id, launcher=SkyPilotLauncher(settings, sdk=api, min_poll_s=0)))
    wait_for("the relaunch", lambda: len(launch_requests(api)) == 2, t)
    second_job = launches(api)[1][1]
    assert second_job == f"caddie-run-{run_id}-attempt-2"
    rid2 = launch_requests(api)[1]
    node_with_outputs(api, tmp_path)
    api.finish(rid2, sky.JobStatus.SUCCEEDED)
    t.join(30)
    assert out == [f"run {run_id} SUCCEEDED"]

    with maker() as s:
        events = list(s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))
        attempts = billed_attempts([Transition(e.at, e.to_status) for e in events])
        assert [a.requeued for a in attempts] == [True, False] and all(a.running_from is not None for a in attempts)  # each attempt billed
        shown = run_attempts(run_id, "H100:8", None, events, utcnow())  # what GET /runs/{id} and the run page list
        assert [(a.launch_key, a.cluster, a.ended) for a in shown] == [(f"run-{run_id}-attempt-1", first_cluster, "node_lost"),
                                                                      (f"run-{run_id}-attempt-2", launches(api)[1][0], "succeeded")]  # fmt: skip
        log = whole_log(s, run_id, LocalArtifactStore(settings.home / "artifacts")).decode()
    assert "caddie: attempt 1 ended (node lost: the job's driver died: the node was preempted or failed); queued for attempt 2 (no checkpoint: it starts again from step 0)" in log
    assert [e.to_status for e in events if e.from_status != e.to_status][1:] == ["PROVISIONING", "RUNNING", "QUEUED", "PROVISIONING", "RUNNING", "SUCCEEDED"]


@pytest.mark.parametrize(("error", "ends"), [
    ("no_cloud", "FAILED"),  # permanent: a missing cloud fails the run at once
    ("no_capacity", "QUEUED"),  # transient: back to the queue for a later try
    ("exits", "FAILED"),  # SkyPilot's check ended with SystemExit (no cloud enabled): a reason, not a dead worker thread
])
def test_a_failed_launch_leaves_no_cluster_row_and_one_clear_reason(maker, settings, error: str, ends: str) -> None:  # noqa: F811
    from sky import exceptions as sky_exc

    exc = {"no_cloud": sky_exc.NoCloudAccessError("\x1b[31mNo cloud access.\x1b[0m Run `sky check`"),
           "no_capacity": sky_exc.ResourcesUnavailableError("\x1b[1mFailed to provision\x1b[0m all possible resources", failover_history=[RuntimeError("x")]),
           "exits": SystemExit()}[error]  # fmt: skip
    api = SkyApiStandIn()
    run_id = new_run(maker)
    t, out = in_thread(lambda: go(maker, settings, run_id, launcher=SkyPilotLauncher(settings, sdk=api, min_poll_s=0)))
    wait_for("the launch", lambda: launch_requests(api), t)
    [rid] = launch_requests(api)
    api.requests[rid].update(status="FAILED", error=exc)
    t.join(30)
    expected = {"no_cloud": "the job could not start: sky.launch: NoCloudAccessError: No cloud access. Run `sky check`",
                "no_capacity": "launch failed, will retry: sky.launch: ResourcesUnavailableError: Failed to provision all possible resources",
                "exits": "the job could not start: sky.launch: SystemExit: SkyPilot ended the call with no message (it prints why on the API "
                         "server's console; `sky check` there says whether any cloud is enabled)"}[error]  # fmt: skip
    assert out == [f"run {run_id} {ends}: {expected}"], out
    with maker() as s:
        run = s.get_one(Run, run_id)
        reasons = list(s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id)))
        assert run.status == ends and s.scalar(select(Cluster).where(Cluster.name.like(f"%-{run_id}"))) is None  # no row left IDLE
    assert not [r for r in reasons if r and r.startswith("driver error")]
    assert "\x1b" not in run.status_reason and type(exc).__name__ in run.status_reason
    assert [c[0] for c in api.calls].count("down") == 1  # whatever the failed launch left up is torn down
