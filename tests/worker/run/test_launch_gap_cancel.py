"""The launch gap meets a cancel (issue 21 item 2; found by bench/faults.py launch-gap-cancel): an
executor dies between submit and record, the team cancels the run, and the next executor must stop
the job the dead one started, not end the run "before launch" and leave its trainer training for nobody."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from service.core.models import Run, RunEvent, utcnow
from tests.worker.run.test_executor import Died, DiesAfterSubmit, go, maker, new_run, settings  # noqa: F401 (fixtures)


def working_in(folder: Path) -> list[psutil.Process]:
    """Live host processes whose working folder is under `folder`: the job's wrapper, sandbox and trainer."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and (p.cwd() + "/").startswith(str(folder) + "/"):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_a_cancel_in_the_launch_gap_stops_the_job_the_dead_executor_started(maker, settings) -> None:  # noqa: F811
    run_id = new_run(maker, {"ITERATIONS": 99})  # trains until stopped
    with pytest.raises(Died):
        go(maker, settings, run_id, launcher=DiesAfterSubmit(settings))
    folder = settings.home / "runs" / str(run_id)
    end = time.monotonic() + 10
    while not working_in(folder):
        assert time.monotonic() < end, "the dead executor's job never started"
        time.sleep(0.05)
    with maker() as s:
        s.get_one(Run, run_id).cancel_requested_at = utcnow()  # what POST /runs/{id}/cancel records for an active run
        s.commit()
    end = time.monotonic() + 20
    while "another worker" in (out := go(maker, settings, run_id)):
        assert time.monotonic() < end
        time.sleep(0.2)  # the dead executor's lease goes stale
    assert out == f"run {run_id} CANCELLED: cancelled by user"
    with maker() as s:
        reasons = list(s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))
        run = s.get_one(Run, run_id)
        assert (run.status, run.status_reason) == ("CANCELLED", "cancelled by user")
    assert any(r.startswith(f"adopted job {run_id}/attempt-1 on ") for r in reasons)
    end = time.monotonic() + 5
    while working_in(folder):  # the job was stopped, not left to its own timeout
        assert time.monotonic() < end, f"still training for nobody: {working_in(folder)}"
        time.sleep(0.05)
    assert len(list(folder.glob("attempt-*"))) == 1
