"""The launch gap on SkyPilot (issue 21 item 2): the real executor on PostgreSQL with the real
SkyPilot launcher; SkyPilot's API server is the stand-in of the launcher's tests (real sky.Task,
JobStatus and exceptions; its few network calls answered in memory). An executor that dies
between `sky.launch` and recording the handle is followed by one that adopts that launch (still
provisioning, or its job already in the cluster's queue): never a second `sky.launch` for one attempt.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("sky")
import sky  # noqa: E402

from service.core.models import Cluster, Run, RunEvent  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from tests.worker.launchers.test_skypilot_launcher import SkyApiStandIn  # noqa: E402
from tests.worker.run.test_executor import Died, go, maker, new_run  # noqa: E402, F401 (maker: the fixture)
from worker.launchers.skypilot import SkyPilotLauncher  # noqa: E402

RESULT = {"status": "succeeded", "val_bpb": 2.5, "val_loss": 4.2, "total_bytes": 1234, "steps": 2, "train_seconds": 0.02, "eval_seconds": 0.01,
          "val_tokens_scored": 99, "val_tokens_total": 99, "ttt_protocol": "none", "train_shards": ["x"], "val_shards": ["y"],
          "trainer_revision": "stand-in", "gpu_name": "H100", "world_size": 8}  # fmt: skip


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, launcher="skypilot", heartbeat_s=0.5, poll_interval_s=0.05, keep_warm_minutes=0, max_attempts=3)


class DiesAfterLaunch(SkyPilotLauncher):
    def submit(self, cluster, job):  # noqa: ANN001, ANN201
        super().submit(cluster, job)
        raise Died


def node_with_outputs(api: SkyApiStandIn, tmp_path: Path) -> None:
    """What `sky.download_logs` brings back of a finished job: its log folder with caddie-output."""
    api.logs_dir = tmp_path / "sky_logs" / "sky-job-3"
    (api.logs_dir / "caddie-output").mkdir(parents=True)
    (api.logs_dir / "caddie-output" / "result.json").write_text(json.dumps(RESULT))
    api.log = "step:1/2 train_loss:5.5000 train_time:10ms step_avg:10.00ms\nstep:2/2 val_loss:4.2000 val_bpb:2.5000 train_time:20ms step_avg:10.00ms\n"


def after_the_dead_one(maker, settings: Settings, run_id: int, api: SkyApiStandIn) -> str:  # noqa: ANN001
    end = time.monotonic() + 20
    while "another worker" in (out := go(maker, settings, run_id, launcher=SkyPilotLauncher(settings, sdk=api, min_poll_s=0))):
        assert time.monotonic() < end
        time.sleep(0.2)  # the dead executor's lease goes stale
    return out


def reasons(maker, run_id: int) -> list[str]:  # noqa: ANN001
    with maker() as s:
        return list(s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


def test_a_job_launched_by_a_dead_executor_is_adopted_not_launched_again(maker, settings, tmp_path: Path) -> None:  # noqa: F811
    api = SkyApiStandIn()
    run_id = new_run(maker)
    with pytest.raises(Died):
        go(maker, settings, run_id, launcher=DiesAfterLaunch(settings, sdk=api, min_poll_s=0))
    with maker() as s:
        run = s.get_one(Run, run_id)
        assert (run.status, run.launch_handle, run.cluster_id is not None) == ("PROVISIONING", None, True)  # the node was claimed first
    [(rid, req)] = [(i, r) for i, r in api.requests.items() if r["name"] == "launch"]
    api.finish(rid, sky.JobStatus.SUCCEEDED)  # the node came up and the job ran to its end while nobody watched
    node_with_outputs(api, tmp_path)

    assert after_the_dead_one(maker, settings, run_id, api) == f"run {run_id} SUCCEEDED"
    assert [c[0] for c in api.calls].count("launch") == 1  # one trainer for the attempt
    with maker() as s:
        run = s.get_one(Run, run_id)
        assert (run.val_bpb, run.attempts or 0, run.launch_handle["job_id"]) == (2.5, 0, "3")
        cluster = s.scalar(select(Cluster).where(Cluster.id == run.cluster_id))
        assert cluster is not None and cluster.name == req["cluster"]
    assert any(r.startswith(f"adopted job 3 on {req['cluster']}, started by an executor that died") for r in reasons(maker, run_id))


def test_a_launch_still_provisioning_when_its_executor_died_is_followed_to_its_job(maker, settings, tmp_path: Path) -> None:  # noqa: F811
    api = SkyApiStandIn()
    run_id = new_run(maker)
    with pytest.raises(Died):
        go(maker, settings, run_id, launcher=DiesAfterLaunch(settings, sdk=api, min_poll_s=0))
    [rid] = [i for i, r in api.requests.items() if r["name"] == "launch"]  # still RUNNING: the node is being provisioned
    node_with_outputs(api, tmp_path)
    outcome: list[str] = []
    second = threading.Thread(target=lambda: outcome.append(after_the_dead_one(maker, settings, run_id, api)))
    second.start()
    end = time.monotonic() + 20
    while not any(r.startswith("adopted its launch request") for r in reasons(maker, run_id)):
        assert time.monotonic() < end and second.is_alive(), (outcome, reasons(maker, run_id))
        time.sleep(0.05)
    api.finish(rid)  # provisioned: job 3 starts
    time.sleep(0.3)
    api.job_statuses[3] = sky.JobStatus.SUCCEEDED
    second.join(30)
    assert outcome == [f"run {run_id} SUCCEEDED"]
    assert [c[0] for c in api.calls].count("launch") == 1
    with maker() as s:
        assert s.get_one(Run, run_id).status == "SUCCEEDED"


def test_a_launch_that_never_reached_skypilot_is_made_once(maker, settings, tmp_path: Path) -> None:  # noqa: F811
    """The executor died before sky.launch answered with a request (nothing on SkyPilot's side): the next one launches."""

    class DiesBeforeLaunch(SkyPilotLauncher):
        def submit(self, cluster, job):  # noqa: ANN001, ANN201
            raise Died

    api = SkyApiStandIn()
    run_id = new_run(maker)
    with pytest.raises(Died):
        go(maker, settings, run_id, launcher=DiesBeforeLaunch(settings, sdk=api, min_poll_s=0))
    node_with_outputs(api, tmp_path)
    outcome: list[str] = []
    second = threading.Thread(target=lambda: outcome.append(after_the_dead_one(maker, settings, run_id, api)))
    second.start()
    end = time.monotonic() + 20
    while not [i for i, r in list(api.requests.items()) if r["name"] == "launch"]:
        assert time.monotonic() < end and second.is_alive(), outcome
        time.sleep(0.05)
    [rid] = [i for i, r in api.requests.items() if r["name"] == "launch"]
    api.finish(rid, sky.JobStatus.SUCCEEDED)
    second.join(30)
    assert outcome == [f"run {run_id} SUCCEEDED"]
    assert [c[0] for c in api.calls].count("launch") == 1
    assert not any(r.startswith("adopted") for r in reasons(maker, run_id))


def test_a_cancel_in_the_launch_gap_stops_the_launch_the_dead_executor_made(maker, settings, tmp_path: Path) -> None:  # noqa: F811
    """Adopt, then stop: the team cancels while nobody drives the run; the next executor finds the launch
    (still provisioning), cancels its request and tears its node down, instead of ending the run 'before
    launch' with a node coming up for nobody."""
    from service.core.models import utcnow

    api = SkyApiStandIn()
    run_id = new_run(maker)
    with pytest.raises(Died):
        go(maker, settings, run_id, launcher=DiesAfterLaunch(settings, sdk=api, min_poll_s=0))
    [(rid, req)] = [(i, r) for i, r in api.requests.items() if r["name"] == "launch"]
    with maker() as s:
        s.get_one(Run, run_id).cancel_requested_at = utcnow()  # what POST /runs/{id}/cancel records for an active run
        s.commit()
    assert after_the_dead_one(maker, settings, run_id, api) == f"run {run_id} CANCELLED: cancelled by user"
    assert ("api_cancel", (rid,), {}) in api.calls and ("down", (req["cluster"],), {}) in api.calls
    assert [c[0] for c in api.calls].count("launch") == 1
    assert any(r.startswith(f"adopted its launch request {rid} on {req['cluster']}") for r in reasons(maker, run_id))
