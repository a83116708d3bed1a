"""The local launcher's hang watch (issue 21): a job that prints nothing and uses no CPU for
CADDIE_IDLE_TIMEOUT_S is stopped as hung within seconds; a job that works silently (a compile, a long
evaluation: CPU) or prints while it waits is left alone. Real jobs in the real sandbox."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from service.core.settings import Settings
from tests.worker.launchers.test_local_limits import needs_bwrap, no_process_of, run
from worker.launchers.base import JobState
from worker.launchers.limits import IDLE_CPU_SHARE, idle_reason, processes_cpu_seconds
from worker.launchers.local import LocalLauncher

JOB = r"""
import json, sys, time
mode = sys.argv[1]
print("step:1/2 train_loss:6.5 train_time:10ms step_avg:10.00ms", flush=True)
if mode == "sleep":  # a deadlock, a wait on a dead peer that sleeps: silent and idle
    import threading
    threading.Event().wait(60)
elif mode == "spin":  # a compile or an evaluation: silent for 6 s, on the CPU all along
    end = time.monotonic() + 6
    while time.monotonic() < end:
        sum(range(10000))
elif mode == "talk":  # idle, but says something every second
    for i in range(6):
        time.sleep(1)
        print(f"waiting {i}", flush=True)
print("done", flush=True)
with open("result.json", "w") as fh:
    json.dump({"status": "succeeded"}, fh)
"""


def launcher(tmp_path: Path, mode: str, idle_s: float, **overrides: object) -> LocalLauncher:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    s = Settings(_env_file=None, home=tmp_path / "home", trainer_command=[sys.executable, str(script), mode], cancel_grace_s=1.0,
                 gpu_count=0, idle_timeout_s=idle_s, **overrides)  # fmt: skip
    return LocalLauncher(s)


def test_the_hang_rule() -> None:
    assert idle_reason(silent_s=11, cpu_s=0.0, window_s=11, limit_s=10).startswith("hung: no output for 11 s")
    assert "CADDIE_IDLE_TIMEOUT_S=10" in idle_reason(11, 0.0, 11, 10)
    assert idle_reason(9, 0.0, 11, 10) == ""  # it spoke within the window
    assert idle_reason(11, IDLE_CPU_SHARE * 11, 11, 10) == ""  # it worked (1% of a core)
    assert idle_reason(11, 0.0, 5, 10) == ""  # not watched long enough to know
    assert idle_reason(1e6, 0.0, 1e6, 0) == ""  # off


def test_cpu_time_counts_the_whole_tree() -> None:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end: pass"])
    try:
        time.sleep(0.8)
        assert processes_cpu_seconds([child.pid]) >= 0.3
    finally:
        child.wait()


@pytest.mark.parametrize("sealed", [pytest.param(True, marks=needs_bwrap), False])
def test_a_silent_idle_job_is_stopped_as_hung_within_seconds(tmp_path: Path, sealed: bool) -> None:
    t0 = time.monotonic()
    st, handle, log = run(launcher(tmp_path, "sleep", 2.0, **({} if sealed else {"sandbox": "none"})), 1)
    took = time.monotonic() - t0
    assert st.state is JobState.FAILED, st
    assert st.reason.startswith("hung: no output for ") and "(CADDIE_IDLE_TIMEOUT_S=2); stopped" in st.reason, st.reason
    assert took < 10, took  # 2 s of silence and idleness, a second's sampling, the job's start-up
    assert "done" not in log and log.rstrip().endswith(st.reason) and no_process_of(handle)


@needs_bwrap
@pytest.mark.parametrize("mode", ["spin", "talk"])
def test_a_job_that_works_or_talks_is_left_alone(tmp_path: Path, mode: str) -> None:
    st, _, log = run(launcher(tmp_path, mode, 2.0), 2)
    assert st.state is JobState.SUCCEEDED, (st, log[-500:])
    assert "done" in log and "hung" not in log


def test_the_default_watch_is_on_and_short() -> None:
    assert 0 < Settings(_env_file=None).idle_timeout_s <= 10
