"""What a script touches is watched without changing it: worker/audit/sitecustomize.py,
loaded through PYTHONPATH by a real Python process, records its opens and connections,
and the rules judge them against the end of training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from service.results.rules import Verdict, check_no_network_in_eval, check_watched_val_reads

HOOK = Path(__file__).resolve().parents[2] / "worker" / "audit"

SCRIPT = """
import socket, sys, time
open("data/fineweb_train_000001.bin", "rb").read()
if sys.argv[1] == "peek":
    open("data/fineweb_val_000000.bin", "rb").read()
time.sleep(0.05)
print("training done", time.time(), flush=True)
time.sleep(0.05)
open("data/fineweb_val_000000.bin", "rb").read()
s = socket.socket(); s.connect(("127.0.0.2" if sys.argv[2] == "remote" else "127.0.0.1", int(sys.argv[3]))); s.close()
"""


def run(tmp_path: Path, mode: str, net: str) -> tuple[list[dict], float]:
    (tmp_path / "data").mkdir(exist_ok=True)
    for name in ("fineweb_train_000001.bin", "fineweb_val_000000.bin"):
        (tmp_path / "data" / name).write_bytes(b"x" * 16)
    (tmp_path / "train_gpt.py").write_text(SCRIPT)
    audit = tmp_path / "audit.jsonl"
    audit.unlink(missing_ok=True)
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(1)
    env = {**os.environ, "PYTHONPATH": str(HOOK)}
    out = subprocess.run([sys.executable, "train_gpt.py", mode, net, str(server.getsockname()[1])], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    server.close()
    train_end = float(out.split()[-1])  # the training-end line's time splits the phases
    return [json.loads(line) for line in audit.read_text().splitlines()], train_end


def test_a_clean_script_passes_and_its_opens_are_recorded(tmp_path: Path) -> None:
    events, end = run(tmp_path, "clean", "local")
    paths = [e["path"] for e in events if e["event"] == "open"]
    assert str(tmp_path / "data" / "fineweb_train_000001.bin") in paths and str(tmp_path / "data" / "fineweb_val_000000.bin") in paths
    assert check_watched_val_reads(events, end).verdict is Verdict.PASS  # val read after training ended: evaluation
    assert check_no_network_in_eval(events, end).verdict is Verdict.PASS  # loopback is not the network


def test_a_val_shard_read_in_training_and_a_connection_in_eval_fail(tmp_path: Path) -> None:
    events, end = run(tmp_path, "peek", "remote")
    val = check_watched_val_reads(events, end)
    assert val.verdict is Verdict.FAIL and "fineweb_val_000000.bin" in val.reason and val.rule == "no_val_in_train"
    connects = [e for e in events if e["event"] == "connect"]
    assert len(connects) == 1 and connects[0]["address"].startswith("127.0.0.2:") and connects[0]["t"] >= end  # recorded, in eval
    assert check_no_network_in_eval(events, end).verdict is Verdict.PASS  # but 127.0.0.0/8 is loopback, not the network
    remote = [{"t": end + 1.0, "event": "connect", "address": "93.184.216.34:443"}]
    assert check_no_network_in_eval(events + remote, end).verdict is Verdict.FAIL
    assert "93.184.216.34:443" in check_no_network_in_eval(events + remote, end).reason
    assert check_no_network_in_eval(remote, end + 2.0).verdict is Verdict.PASS  # during training: not this rule's
    assert check_no_network_in_eval(None, None).verdict is Verdict.NOT_COMPARABLE
