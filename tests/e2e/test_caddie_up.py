"""`caddie up` (worker.embedded.run_embedded): SQLite, the SQL broker, the local launcher,
the smoke corpus built on first start, a first admin token; a run goes through; Ctrl-C
stops every child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import REPO, TINY, free_port

pytestmark = pytest.mark.e2e


def start_caddie_up(tmp_path: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    """`caddie up` on ``port`` in ``tmp_path``, its output in tmp_path/up.out."""
    out = open(tmp_path / "up.out", "w+")
    return subprocess.Popen([sys.executable, "-c", f"from worker.embedded import run_embedded; run_embedded(port={port})"],
                            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for_token(up: subprocess.Popen, tmp_path: Path, end: float) -> str:
    """The first admin token `caddie up` prints once it is ready (before time.monotonic() reaches ``end``)."""
    while True:
        assert up.poll() is None and time.monotonic() < end, (tmp_path / "up.out").read_text()
        m = re.search(r"admin token \(shown once\): (\S+)", (tmp_path / "up.out").read_text())
        if m:
            return m[1]
        time.sleep(0.2)


def test_caddie_up_runs_a_smoke_run_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    env.update(CADDIE_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), CADDIE_HEARTBEAT_S="1", CADDIE_POLL_INTERVAL_S="0.1", OMP_NUM_THREADS="1")
    up = start_caddie_up(tmp_path, env, port)
    try:
        end = time.monotonic() + 90
        token = wait_for_token(up, tmp_path, end)
        assert (tmp_path / "home" / "data" / "tokenizers" / "fineweb_1024_bpe.model").is_file()
        children = psutil.Process(up.pid).children()
        assert len(children) == 4  # api, runs worker, control worker, beat

        client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        while True:
            try:
                r = client.post("/runs", json={"name": "smoke", "track": "unlimited", "hardware": "cpu", "config": TINY})
                break
            except httpx.HTTPError:
                assert time.monotonic() < end
                time.sleep(0.2)
        assert r.status_code == 201, r.text
        # `make up` names the web pages, and they answer.
        assert f"web pages: http://127.0.0.1:{port}/runs" in (tmp_path / "up.out").read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/signin", timeout=10).status_code == 200
        run_id = r.json()["runs"][0]["id"]
        end = time.monotonic() + 120
        while (run := client.get(f"/runs/{run_id}").json())["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            assert time.monotonic() < end, run
            time.sleep(0.2)
        assert run["status"] == "SUCCEEDED", run["status_reason"]
        assert run["val_bpb"] > 0 and run["artifact_bytes"] > 0
        # The default stack (2026-04-27) trains on sp8192: its smoke corpus is there too, so a spec
        # naming no stack gets past its launch; a variant caddie up has no data for is refused at submit.
        assert (tmp_path / "home" / "data" / "tokenizers" / "fineweb_8192_bpe.model").is_file()
        r = client.post("/runs", json={"name": "default-stack", "track": "unlimited", "hardware": "cpu", "config": {"ITERATIONS": 1}})
        assert r.status_code == 201, r.text
        run_id = r.json()["runs"][0]["id"]
        end = time.monotonic() + 120
        while (run := client.get(f"/runs/{run_id}").json())["status"] in ("QUEUED", "PROVISIONING"):
            assert time.monotonic() < end, run
            time.sleep(0.2)
        assert run["status"] in ("RUNNING", "SUCCEEDED"), run["status_reason"]
        client.post(f"/runs/{run_id}/cancel")
        refused = client.post("/runs", json={"name": "sp4096", "track": "unlimited", "hardware": "cpu", "config": {**TINY, "VOCAB_SIZE": 4096}})
        assert refused.status_code == 422 and "sp4096" in refused.text, refused.text
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(40)
    assert "caddie stopped." in (tmp_path / "up.out").read_text()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


SLEEPER = r"""
import os, time
print("training", flush=True)
time.sleep(300)
"""


def test_ctrl_c_on_caddie_up_stops_a_running_trainer_and_its_run_says_so(tmp_path: Path) -> None:
    import json
    import sqlite3

    home = tmp_path / "home"
    data = home / "data"
    (data / "datasets" / "fineweb10B_sp1024").mkdir(parents=True)
    (data / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin").write_bytes(b"")  # no smoke corpus build needed
    (data / "tokenizers").mkdir()
    (data / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"")
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    env.update(CADDIE_HOME=str(home), PYTHONPATH=str(REPO), CADDIE_HEARTBEAT_S="1", CADDIE_POLL_INTERVAL_S="0.1",
               CADDIE_GPU_COUNT="0", CADDIE_CANCEL_GRACE_S="2", CADDIE_TRAINER_COMMAND=json.dumps([sys.executable, str(sleeper)]))  # fmt: skip
    up = start_caddie_up(tmp_path, env, port)
    trainer = None
    try:
        end = time.monotonic() + 90
        token = wait_for_token(up, tmp_path, end)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        while True:
            try:
                r = client.post("/runs", json={"name": "long", "track": "unlimited", "hardware": "cpu", "config": {}})
                break
            except httpx.HTTPError:
                assert time.monotonic() < end
                time.sleep(0.2)
        assert r.status_code == 201, r.text
        run_id = r.json()["runs"][0]["id"]
        child_file = home / "runs" / str(run_id) / "attempt-1" / "child.json"
        while trainer is None:
            assert time.monotonic() < end, client.get(f"/runs/{run_id}").json()
            if child_file.exists() and b"training" in (child_file.parent / "stdout.log").read_bytes():
                trainer = psutil.Process(json.loads(child_file.read_text())["pid"])
            time.sleep(0.2)
        assert client.get(f"/runs/{run_id}").json()["status"] == "RUNNING"
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        up.wait(60)
    text = (tmp_path / "up.out").read_text()
    assert "caddie stopped." in text and "stopped 1 running job(s)" in text, text
    assert not trainer.is_running() or trainer.status() == psutil.STATUS_ZOMBIE  # no trainer left behind
    with sqlite3.connect(home / "caddie.db") as db:
        status, reason = db.execute("SELECT status, status_reason FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert (status, reason) == ("CANCELLED", "stopped when caddie up was stopped (Ctrl-C)")
