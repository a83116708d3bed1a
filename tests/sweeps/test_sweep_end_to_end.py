"""A real sweep end to end (issue 24 item 6, small): submitted over REST, its trials run by a real
`celery worker` and beat through the local launcher with the real trainer on the smoke corpus,
PostgreSQL and Redis; Optuna's median pruner stops the trial whose loss runs away, its run is
cancelled, and the sweep ends with the good trial as its best. bench/sweeps_real.py is the full one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import TINY, Stack
from tests.sweeps.conftest import run_sweep

pytestmark = pytest.mark.e2e

# A train loss every 2 steps, and enough steps (~12 s on 2 idle cores) that the prune (a 1 s tick after the
# metrics land, then the worker's next poll) reaches the second trial while it trains, also on a loaded CI
# machine: with 30 steps (~3 s) the run once ran out before the cancel arrived.
ITERATIONS = 120
BASE = {**TINY, "ITERATIONS": ITERATIONS, "WARMDOWN_ITERS": 40, "TRAIN_LOG_EVERY": 2, "TTT_ENABLED": 0}



def test_a_real_sweep_prunes_the_runaway_trial_and_keeps_the_good_one(stack: Stack) -> None:
    body: dict[str, Any] = {
        "name": "e2e-sweep", "track": "unlimited", "hardware": "cpu", "base": BASE, "strategy": "grid", "seeds": [1],
        "space": {"TIED_EMBED_LR": {"values": [0.01, 5.0]}},  # the grid runs the good one first, then one whose loss runs away
        "max_trials": 2, "max_parallel": 1, "pruner": "median", "prune": {"min_step": 6, "startup_trials": 1},
    }  # fmt: skip
    with stack.client() as c:
        sweep, runs = run_sweep(stack, c, body, 240)
        steps = [m["step"] for m in c.get(f"/runs/{runs[2]['id']}/metrics").json() if m["kind"] == "train"]

    good, bad = sweep["trials"]
    assert (good["status"], bad["status"]) == ("complete", "pruned"), sweep["trials"]
    assert sweep["best"]["number"] == 1 and good["value"] == pytest.approx(runs[1]["val_bpb"])
    assert runs[1]["status"] == "SUCCEEDED" and runs[1]["steps"] == ITERATIONS
    assert bad["reason"].startswith("pruned by Optuna's MedianPruner at step ") and bad["prune"]["trial_loss"] > bad["prune"]["median_loss"]
    assert runs[2]["status"] == "CANCELLED" and bad["prune"]["step"] <= max(steps) < ITERATIONS  # stopped mid-run, through the ordinary cancel path
    assert sweep["counts"] == {"complete": 1, "pruned": 1} and "max_trials (2) reached" in sweep["status_reason"]
