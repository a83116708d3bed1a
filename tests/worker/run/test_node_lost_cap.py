"""How many times a run is relaunched (issue 21 item 7): a lost node (a preempted spot node, a dead machine)
is not the run's doing, so it does not use up CADDIE_MAX_ATTEMPTS, the retries of launches that failed
(no capacity); it counts against CADDIE_MAX_NODE_LOST, so a run whose node dies every time still ends.
The real executor on PostgreSQL with the real SkyPilot launcher over the API stand-in of its tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sky")
import sky  # noqa: E402
from sky import exceptions as sky_exc  # noqa: E402

from service.core.models import Run  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from tests.worker.launchers.test_skypilot_launcher import SkyApiStandIn  # noqa: E402
from tests.worker.run.test_executor import go, maker, new_run  # noqa: E402, F401 (maker: the fixture)
from worker.launchers.skypilot import SkyPilotLauncher  # noqa: E402


class Node(SkyApiStandIn):
    """Each sky.launch comes up and then, by `fates` in turn: 'lost' (its job's driver dies: the node
    went away) or 'full' (the launch fails: no capacity anywhere)."""

    def __init__(self, fates: list[str], logs: Path) -> None:
        super().__init__()
        self.fates = fates
        self.logs_dir = logs  # a lost node hands nothing back
        logs.mkdir(parents=True, exist_ok=True)

    def launch(self, task: Any, **kw: Any) -> str:
        rid = super().launch(task, **kw)
        if self.fates.pop(0) == "lost":
            self.finish(rid, sky.JobStatus.FAILED_DRIVER)
        else:
            self.requests[rid].update(status="FAILED", error=sky_exc.ResourcesUnavailableError("no capacity", failover_history=[RuntimeError("x")]))
        return rid


def settings(tmp_path: Path, **caps: int) -> Settings:
    return Settings(home=tmp_path, launcher="skypilot", heartbeat_s=0.5, poll_interval_s=0.05, keep_warm_minutes=0, **caps)


def attempts(maker, settings: Settings, run_id: int, api: Node) -> list[str]:  # noqa: ANN001, F811
    """Drive the run pass after pass, as dispatch would, until it ends: each pass's outcome."""
    outs: list[str] = []
    while not outs or " QUEUED: " in outs[-1]:
        outs.append(go(maker, settings, run_id, launcher=SkyPilotLauncher(settings, sdk=api, min_poll_s=0)))
        assert len(outs) < 10, outs
    return outs


def test_lost_nodes_do_not_use_up_the_runs_retries_but_are_capped_themselves(maker, tmp_path: Path) -> None:  # noqa: F811
    s = settings(tmp_path, max_attempts=1, max_node_lost=3)  # one launch failure fails the run; three lost nodes do
    api = Node(["lost", "lost", "lost", "lost"], tmp_path / "logs")
    run_id = new_run(maker)
    outs = attempts(maker, s, run_id, api)
    assert [o.split(": ")[0] for o in outs] == [f"run {run_id} QUEUED", f"run {run_id} QUEUED", f"run {run_id} FAILED"], outs
    assert outs[-1].startswith(f"run {run_id} FAILED: gave up after its node was lost 3 times (CADDIE_MAX_NODE_LOST=3): node lost: "), outs
    with maker() as session:
        run = session.get_one(Run, run_id)
        assert (run.status, run.attempts) == ("FAILED", 2)
    assert [c[0] for c in api.calls].count("launch") == 3


def test_failed_launches_count_against_max_attempts_whatever_nodes_were_lost_before(maker, tmp_path: Path) -> None:  # noqa: F811
    s = settings(tmp_path, max_attempts=2, max_node_lost=4)
    api = Node(["lost", "full", "lost", "full"], tmp_path / "logs")
    run_id = new_run(maker)
    outs = attempts(maker, s, run_id, api)  # (the retry wait is dispatch's: each pass here is driven at once)
    assert len(outs) == 4, outs  # lost, no capacity (1 of 2), lost, no capacity (2 of 2)
    assert outs[-1].startswith(f"run {run_id} FAILED: gave up after 4 attempts (2 of them ended by a lost node, counted apart): launch failed: "), outs
