"""The real stack the sweeps' end-to-end modules run on: one per module, on a database of its own (the stack's
scheduler acts on every run it sees)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, _stack
from tests.fresh_db import fresh_database


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, smoke_corpus_dir: Path) -> Iterator[Stack]:
    with fresh_database() as pg_url:
        yield from _stack(tmp_path_factory, pg_url, redis_url, smoke_corpus_dir)


def run_sweep(stack: Stack, c: httpx.Client, body: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Submit ``body`` over REST and wait until the sweep is done and trial 2's run (the one each test's grid
    prunes) has stopped: pruning asks for the cancel, the run's worker stops the job. Returns the sweep and
    each trial's first run by trial number."""
    r = c.post("/sweeps", json=body)
    assert r.status_code == 201, r.text
    end = time.monotonic() + timeout_s
    while (sweep := c.get(f"/sweeps/{r.json()['id']}").json())["status"] != "done":
        assert time.monotonic() < end, f"sweep not done: {sweep['status_reason']} {sweep['trials']} runs {_runs(c, sweep)}\n{stack.explain()}"
        time.sleep(0.5)
    while (runs := {t["number"]: c.get(f"/runs/{t['run_ids'][0]}").json() for t in sweep["trials"]})[2]["status"] == "RUNNING":
        assert time.monotonic() < end, f"the pruned trial's run was not stopped\n{stack.explain()}"
        time.sleep(0.5)
    return sweep, runs


def _runs(c: httpx.Client, sweep: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(r["id"], r["status"], r["status_reason"]) for t in sweep["trials"] for r in (c.get(f"/runs/{i}").json() for i in t["run_ids"])]
