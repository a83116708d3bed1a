"""`caddie sweep submit | list | show | stop | resume` against the real API (SQLite)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from service.core.db import get_sessionmaker
from service.core.settings import Settings
from service.sweeps.store import advance_sweeps
from tests.cli.conftest import Caddie

SWEEP = """\
name: layers
track: 10min_16mb
hardware: H100:8
base: {XSA_LAST_N: 4}
space:
  NUM_LAYERS: {values: [9, 10]}
  MATRIX_LR: {low: 0.02, high: 0.05, log: true}
strategy: random
seeds: [1, 2]
max_trials: 2
max_parallel: 1
budget_gpu_hours: 20
"""


def test_sweep_commands(caddie: Caddie, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    said = caddie.ok("sweep", "submit", str(path)).stdout
    assert "submitted: random over NUM_LAYERS, MATRIX_LR" in said
    sweep_id = int(said.split()[1])
    with get_sessionmaker(caddie.db_url)() as session:
        assert advance_sweeps(session, Settings(home=caddie.home, database_url=caddie.db_url), records=[]) == 1
    listed = caddie.ok("sweep", "list").stdout
    assert "layers" in listed and "1 running" in listed
    shown = caddie.ok("sweep", "show", str(sweep_id)).stdout
    assert "random over NUM_LAYERS, MATRIX_LR" in shown and "budget 20 GPU-hours" in shown and "NUM_LAYERS=" in shown
    assert "stopped" in caddie.ok("sweep", "stop", str(sweep_id)).stdout
    assert "stopped" in caddie.ok("sweep", "show", str(sweep_id)).stdout
    assert "is stopped, not running" in caddie.fails("sweep", "stop", str(sweep_id))
    assert "running" in caddie.ok("sweep", "resume", str(sweep_id)).stdout
    assert caddie.fails("sweep", "show", "9999") == "sweep 9999 not found"

    path.write_text(SWEEP.replace("max_parallel: 1", "max_parallel: 0"))
    assert "max_parallel: Input should be greater than or equal to 1" in caddie.fails("sweep", "submit", str(path))
    path.write_text(SWEEP.replace("high: 0.05", "high: 50"))
    error = caddie.fails("sweep", "submit", str(path))
    assert "space.MATRIX_LR.high" in error and "must be <= 10" in error, error
    path.write_text(SWEEP + "bogus: 1\n")
    assert "unknown key(s) bogus" in caddie.fails("sweep", "submit", str(path))


def test_sweep_list_follows_the_cursor(caddie: Caddie, tmp_path: Path) -> None:
    for name in ("first-sweep", "second-sweep", "third-sweep"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(SWEEP.replace("name: layers", f"name: {name}"))
        caddie.ok("sweep", "submit", str(path))
    one = caddie.ok("sweep", "list", "--limit", "1").stdout
    assert "third-sweep" in one and "second-sweep" not in one and "more with --all" in one
    every = caddie.ok("sweep", "list", "--limit", "1", "--all").stdout
    assert all(n in every for n in ("first-sweep", "second-sweep", "third-sweep")) and "more with --all" not in every


SCRIPT_SWEEP = """\
name: lr-script
track: 10min_16mb
hardware: H100:8
script: mine/train_gpt.py          # relative to this file, as caddie submit's spec file
files: [mine/helper.py]
env: {MAX_WALLCLOCK_SECONDS: 300}
data: sp1024
space:
  LR: {low: 0.01, high: 0.1, log: true, steps: 2}
strategy: grid
seeds: [1]
max_trials: 2
max_parallel: 2
"""


def test_a_script_sweep_file_sends_its_script_and_shows_it(caddie: Caddie, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train_gpt.py").write_bytes(b"print('hi')\n")
    (tmp_path / "mine" / "helper.py").write_bytes(b"X = 1\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(SCRIPT_SWEEP)
    said = caddie.ok("sweep", "submit", str(path)).stdout
    assert "submitted: grid over LR" in said
    sweep_id = int(said.split()[1])
    with get_sessionmaker(caddie.db_url)() as session:
        advance_sweeps(session, Settings(home=caddie.home, database_url=caddie.db_url), records=[])  # (other tests' sweeps share the API)
    shown = caddie.ok("sweep", "show", str(sweep_id)).stdout

    sha = hashlib.sha256(b"print('hi')\n").hexdigest()
    assert f"script train_gpt.py {sha[:12]}, data sp1024, env MAX_WALLCLOCK_SECONDS=300, +1 file(s)" in shown
    assert "LR=0.01" in shown and "LR=0.1" in shown

    (tmp_path / "bad.yaml").write_text(SCRIPT_SWEEP.replace("mine/train_gpt.py", "absent.py"))
    error = caddie.fails("sweep", "submit", str(tmp_path / "bad.yaml"))
    assert "script" in error and "absent.py" in error
