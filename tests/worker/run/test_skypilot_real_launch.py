"""A run launched through SkyPilot's real API server to the cloud boundary (issue 20 item 6, issue 21 item 7):
the real executor on PostgreSQL, the real SkyPilot launcher and client, and `python -m sky.server.server`
with a HOME of no credentials, so the launch fails where a cloud would be asked. What a team sees: the
run ends with one reason that says why (no "driver error" chain, no terminal colour codes), and no
cluster row is left behind for a node that never came up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("sky")
import sky  # noqa: E402

from service.core.models import Cluster, Run, RunEvent  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from tests.worker.launchers.test_skypilot_real_server import endpoint  # noqa: E402, F401 (the fixture)
from tests.worker.run.test_executor import go, maker, new_run  # noqa: E402, F401 (maker: the fixture)
from worker.launchers.skypilot import SkyPilotLauncher  # noqa: E402

pytestmark = pytest.mark.slow  # the server's start and one failed launch: ~20 s here

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_a_launch_no_cloud_can_take_fails_with_one_clear_reason_and_no_cluster_row(
    maker, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import pandas as pd
    from sky.utils import accelerator_registry

    monkeypatch.setattr(accelerator_registry, "_accelerator_df", pd.DataFrame({"AcceleratorName": ["H100"], "Clouds": ["AWS, GCP"]}))
    settings = Settings(home=tmp_path, launcher="skypilot", heartbeat_s=0.5, poll_interval_s=0.2, keep_warm_minutes=0, max_attempts=1)
    run_id = new_run(maker, {"STACK": "2026-03-23"})
    outcome = go(maker, settings, run_id, launcher=SkyPilotLauncher(settings, sdk=sky, min_poll_s=0))
    with maker() as s:
        run = s.get_one(Run, run_id)
        reasons = list(s.scalars(select(RunEvent.reason).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))
        clusters = s.scalars(select(Cluster)).all()
    assert run.status == "FAILED", (outcome, run.status, run.status_reason)
    reason = run.status_reason or ""
    assert reason and not ANSI.search(reason) and "\x1b" not in reason, reason
    assert reason.lower().count("driver error") <= 1, reason
    assert reason.startswith("gave up after 1 attempts: launch failed: ") and "will retry" not in reason, reason  # where, and no promise
    assert not any(ANSI.search(r or "") for r in reasons), reasons
    assert [c for c in clusters if c.status != "DOWN"] == [], [(c.name, c.status) for c in clusters]  # nothing left claiming a node
