"""A run's deadline and the silence watchdog count from when its job runs, not from its launch (issue 21
item 3, on SkyPilot): provisioning a node, its setup and its data download are minutes in which a job is
PENDING and prints nothing. The real executor on PostgreSQL with the real SkyPilot launcher over the API
stand-in; a run whose deadline is 3 s (1 s training cap + 1 s evaluation + 1 s overhead) waits 4 s for its
node and is then stopped by the limit it breaks, counted from its job's start."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("sky")

from service.core.models import Run, RunEvent  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from tests.worker.launchers.test_skypilot_launcher import SkyApiStandIn  # noqa: E402
from tests.worker.run.test_executor import go, maker, new_run  # noqa: E402, F401 (maker: the fixture)
from tests.worker.run.test_skypilot_preemption import in_thread, launch_requests, wait_for  # noqa: E402
from worker.launchers.skypilot import SkyPilotLauncher  # noqa: E402

PROVISIONING_S = 4.0


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, launcher="skypilot", heartbeat_s=0.5, poll_interval_s=0.05, keep_warm_minutes=0, max_attempts=3,
                    silence_timeout_s=2.0, eval_cap_s=1.0, deadline_overhead_s=1.0)  # fmt: skip


def provisioned_after_a_while(maker, settings: Settings, api: SkyApiStandIn, run_id: int) -> tuple[threading.Thread, list[str], float]:  # noqa: ANN001
    """The run launched; its node takes PROVISIONING_S to come up, during which it must not be stopped."""
    t, out = in_thread(lambda: go(maker, settings, run_id, launcher=SkyPilotLauncher(settings, sdk=api, min_poll_s=0)))
    wait_for("the launch", lambda: launch_requests(api), t)
    time.sleep(PROVISIONING_S)  # past its deadline and its silence limit, counted from the launch
    with maker() as s:
        assert s.get_one(Run, run_id).status == "RUNNING" and t.is_alive(), out  # not stopped while its node comes up
    api.finish(launch_requests(api)[0])  # the job runs
    return t, out, time.monotonic()


def started_event(maker, run_id: int) -> str:  # noqa: ANN001
    with maker() as s:
        return s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id, RunEvent.reason.startswith("job running"))).one()


def test_a_job_silent_once_it_runs_is_stopped_by_the_watchdog_counted_from_its_start(maker, settings) -> None:  # noqa: F811
    api = SkyApiStandIn()
    run_id = new_run(maker, {"MAX_WALLCLOCK_SECONDS": 1})
    t, out, ran_from = provisioned_after_a_while(maker, settings, api, run_id)
    t.join(30)
    stopped_after = time.monotonic() - ran_from
    assert out and out[0].startswith(f"run {run_id} FAILED: silent: no output for "), out
    # The 2 s limit, from the job's start, not at once. ran_from is read just after the stand-in marks the job
    # running, so the executor's clock may start a poll earlier (1.98 s seen on a loaded machine).
    assert 2.0 - 0.25 <= stopped_after < 2.0 + 5.0, stopped_after
    reason = started_event(maker, run_id)
    waited = float(reason.split(" s after its launch")[0].rsplit(" ", 1)[-1])
    assert PROVISIONING_S - 0.5 <= waited < PROVISIONING_S + 5, reason


def test_a_job_that_prints_is_stopped_at_its_deadline_counted_from_its_start(maker, settings) -> None:  # noqa: F811
    api = SkyApiStandIn()
    run_id = new_run(maker, {"MAX_WALLCLOCK_SECONDS": 1})
    t, out, ran_from = provisioned_after_a_while(maker, settings, api, run_id)

    def prints() -> None:  # a step line every 0.3 s: never silent
        i = 0
        while t.is_alive():
            i += 1
            api.log += f"step:{i}/99999 train_loss:5.0000 train_time:{i * 300}ms step_avg:300.00ms\n"
            time.sleep(0.3)

    printer = threading.Thread(target=prints)
    printer.start()
    t.join(30)
    printer.join(5)
    stopped_after = time.monotonic() - ran_from
    assert out and out[0].startswith(f"run {run_id} FAILED: hard timeout: still running past its deadline of 3 s"), out
    assert 3.0 - 0.5 <= stopped_after < 3.0 + 5.0, stopped_after  # its 3 s, from the job's start
    assert "count from now" in started_event(maker, run_id)
