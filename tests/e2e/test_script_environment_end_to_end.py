"""A script run's own environment end to end (issue 20 item 3): submitted over REST with its
requirements.txt, built by a real `celery worker`'s local launcher with uv from local wheels
(offline) before the job, the job importing from it; the run records what it held. A requirement
that cannot be installed fails the run before any training, with uv's own message."""

from __future__ import annotations

import base64

import pytest

from tests.e2e.conftest import Stack
from tests.wheels import make_wheel

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a whole stack: the worker builds the environment, then runs the job

SCRIPT = b'''
import sys, tinypkg
print(f"tinypkg {tinypkg.VALUE} from {tinypkg.__file__} python {sys.executable}", flush=True)
print("step:1/1 train_loss:3.0000 train_time:10ms step_avg:10.00ms", flush=True)
print("final_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.20000000", flush=True)
'''


def submit(stack: Stack, requirements: bytes, script: bytes = SCRIPT) -> int:
    spec = {"name": "own env", "track": "unlimited", "hardware": "cpu", "script": base64.b64encode(script).decode(),
            "files": [{"name": "requirements.txt", "content": base64.b64encode(requirements).decode()}], "data": "sp1024",
            "environment": {"requirements": "requirements.txt", "python": "3.11"}}
    with stack.client() as c:
        r = c.post("/runs", json=spec)
    assert r.status_code == 201, r.text
    return r.json()["runs"][0]["id"]


def test_a_run_builds_its_environment_then_runs_in_it_and_records_it(stack: Stack) -> None:
    make_wheel(stack.home / "wheels", "tinypkg", "1.2.3", {"tinypkg/__init__.py": "VALUE = 42\n"})
    good = submit(stack, b"tinypkg==1.2.3\n")
    bad = submit(stack, b"tinypkg==1.2.3\nnosuchpkg>=1\n")
    run = stack.wait_for(good, {"SUCCEEDED", "FAILED", "CANCELLED"}, 120)
    assert run["status"] == "SUCCEEDED", run["status_reason"]
    with stack.client() as c:
        log = c.get(f"/runs/{good}/logs", params={"offset": 0}).json()["data"]
    envs = stack.home / "envs"
    assert "tinypkg 42 from " + str(envs) in log and "/bin/python" in log  # the job imported from its own environment
    env = run["environment"]
    assert env["packages"]["tinypkg"] == "1.2.3" and env["python"].startswith("3.11.") and env["torch"] is None
    assert (envs / env["env_hash"][:20] / "caddie-env.json").is_file()

    failed = stack.wait_for(bad, {"SUCCEEDED", "FAILED", "CANCELLED"}, 120)
    assert failed["status"] == "FAILED" and failed["started_at"] is None  # never RUNNING: no job, no training
    reason = failed["status_reason"]
    assert reason.startswith("launch failed: the run's environment could not be built: uv pip install failed:")
    assert "nosuchpkg" in reason and "No solution found when resolving dependencies" in reason
    with stack.client() as c:
        assert c.get(f"/runs/{bad}/logs", params={"offset": 0}).json()["data"] == ""

    # A run shows its environment while it runs, and keeps it when it is cancelled before any output is collected.
    slow = submit(stack, b"tinypkg==1.2.3\n", b"import time, tinypkg\nprint('started', flush=True)\ntime.sleep(120)\n" + SCRIPT)
    running = stack.wait_for(slow, {"RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}, 120)
    assert running["status"] == "RUNNING" and running["environment"] == env
    with stack.client() as c:
        assert c.post(f"/runs/{slow}/cancel").status_code == 200
    cancelled = stack.wait_for(slow, {"SUCCEEDED", "FAILED", "CANCELLED"}, 60)
    assert cancelled["status"] == "CANCELLED" and cancelled["environment"] == env
