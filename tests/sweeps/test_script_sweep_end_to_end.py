"""A real script sweep end to end (issue 24 item 1): a stand-in train_gpt.py whose val_bpb depends on its LR env
variable, submitted as a sweep's base over REST, its trials run as script run groups by a real `celery worker` and
beat through the local launcher, on PostgreSQL and Redis. Optuna's median pruner reads the train loss of the script's
own log and stops the trial whose loss runs away; the sweep ends with the LR it was built to prefer as its best."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.sweeps.conftest import run_sweep

pytestmark = pytest.mark.e2e

# No torch, no data read: a challenge-format log in ~3 s, best at LR=0.03 (val_bpb 1.2 there), its train loss
# shifted by the same bowl, so a bad LR trails from its first step.
SCRIPT = b'''\
import os, time
lr, steps = float(os.environ["LR"]), int(os.environ.get("ITERATIONS", 20))
bowl = 100 * (lr - 0.03) ** 2
t0 = time.perf_counter()
print(f"step:0/{steps} val_loss:{4 + bowl:.4f} val_bpb:{2 + bowl:.4f} train_time:0ms step_avg:0.01ms", flush=True)
for step in range(1, steps + 1):
    time.sleep(0.15)
    ms = 1000 * (time.perf_counter() - t0)
    print(f"step:{step}/{steps} train_loss:{3 - step / 100 + bowl:.4f} train_time:{ms:.0f}ms step_avg:{ms / step:.2f}ms", flush=True)
bpb = 1.2 + bowl
print(f"step:{steps}/{steps} val_loss:{2 * bpb:.4f} val_bpb:{bpb:.4f} train_time:{ms:.0f}ms step_avg:{ms / steps:.2f}ms", flush=True)
with open("final_model.int8.ptz", "wb") as fh:
    fh.write(b"x" * 1000)
code = len(open(__file__, "rb").read())
print(f"Serialized model int8+zlib: 1000 bytes", flush=True)
print(f"Code size: {code} bytes", flush=True)
print(f"Total submission size int8+zlib: {1000 + code} bytes", flush=True)
print(f"final_int8_zlib_roundtrip val_loss:{2 * bpb:.4f} val_bpb:{bpb:.4f} eval_time:1ms", flush=True)
print(f"final_int8_zlib_roundtrip_exact val_loss:{2 * bpb:.8f} val_bpb:{bpb:.8f}", flush=True)
'''



def test_a_real_script_sweep_finds_the_best_env_value_and_prunes_the_runaway(stack: Stack) -> None:
    body: dict[str, Any] = {
        "name": "e2e-script-sweep", "track": "unlimited", "hardware": "cpu", "script": base64.b64encode(SCRIPT).decode(),
        "env": {"ITERATIONS": 20, "MAX_WALLCLOCK_SECONDS": 60}, "data": "sp1024", "strategy": "grid", "seeds": [1],
        "space": {"LR": {"values": [0.02, 0.3, 0.03]}},  # a good one, then one whose loss runs away, then the best
        "max_trials": 3, "max_parallel": 1, "pruner": "median", "prune": {"min_step": 4, "startup_trials": 1},
    }  # fmt: skip
    started = time.monotonic()
    with stack.client() as c:
        sweep, runs = run_sweep(stack, c, body, 120)
    took = time.monotonic() - started

    first, runaway, best = sweep["trials"]
    assert [t["params"] for t in sweep["trials"]] == [{"LR": 0.02}, {"LR": 0.3}, {"LR": 0.03}]
    assert (first["status"], runaway["status"], best["status"]) == ("complete", "pruned", "complete"), sweep["trials"]
    assert sweep["best"]["number"] == 3 and best["value"] == pytest.approx(1.2) and first["value"] == pytest.approx(1.21)
    assert runaway["reason"].startswith("pruned by Optuna's MedianPruner at step ") and runs[2]["status"] == "CANCELLED"
    for n, lr in ((1, "0.02"), (3, "0.03")):  # each trial a script run: the same script, its env the base's and its value
        run = runs[n]
        assert run["kind"] == "script" and run["status"] == "SUCCEEDED" and run["spec"]["script"] == hashlib.sha256(SCRIPT).hexdigest()
        assert run["spec"]["env"] == {"ITERATIONS": "20", "LR": lr, "MAX_WALLCLOCK_SECONDS": "60"}
        assert run["val_bpb"] == sweep["trials"][n - 1]["value"]  # the trial's value is its script's own final line
    assert sweep["gpu_hours_saved"] == 0  # cpu: no GPUs, so no GPU-hours either way
    assert took < 90, took
