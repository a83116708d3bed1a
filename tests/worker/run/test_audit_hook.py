"""What a script touches is watched without changing it (issue 20 item 5): a real script run
through the local launcher (sealed in bubblewrap) loads worker/audit/sitecustomize.py, whose
events the worker summarises against the run's own log lines (service.runs.touches), and the
rules judge: a validation shard read during training fails no_val_in_train, a connection
during evaluation fails no_network_in_eval; a clean script passes both."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.settings import Settings
from service.results.rules import RunFacts, Verdict, check_run
from service.runs.touches import EVAL, SETUP, TRAIN, log_marks, summarise
from tests.worker.launchers.test_local_launcher import wait_terminal
from worker.launchers.base import JobSpec, JobState
from worker.launchers.local import LocalLauncher
from worker.launchers.trainer_env import AUDIT_ENV
from worker.run.script_job import watched_touches

RECORDS = Path(__file__).resolve().parents[4] / "shared" / "challenge" / "records" / "track_10min_16mb"

# Loads its validation tokens at setup (as every record does), trains 3 steps, evaluates.
SCRIPT = rb'''
import os, socket, time
import helper  # a module of the run folder: counted as its code
D = os.environ["DATA_PATH"]
def read(name): return open(f"{D}/{name}", "rb").read()
read("fineweb_train_000000.bin"); read("fineweb_val_000000.bin")
for step in range(1, 4):
    if step == 2 and os.environ.get("PEEK") == "1":
        read("fineweb_val_000000.bin")  # a validation shard in the training loop
    time.sleep(0.02)
    print(f"step:{step}/3 train_loss:{5 - step:.4f} train_time:{step * 10}ms step_avg:10.00ms", flush=True)
read("fineweb_val_000000.bin")  # evaluation
if os.environ.get("NET") == "1":
    try:
        socket.create_connection(("192.0.2.7", 443), timeout=0.2)  # recorded even though the sandbox has no route
    except OSError:
        pass
print("final_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.20000000", flush=True)
'''


@pytest.fixture()
def launcher(tmp_path: Path) -> LocalLauncher:
    shards = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    for name in ("fineweb_train_000000.bin", "fineweb_val_000000.bin"):
        (shards / name).write_bytes(b"x" * 64)
    return LocalLauncher(Settings(home=tmp_path / "home", data_root=tmp_path / "data", gpu_count=0))


def run_script(launcher: LocalLauncher, **env: str) -> tuple[dict, list]:
    """The touches and the rule checks of one real script run, as the executor makes them."""
    job = JobSpec(run_id=7, env={"SEED": "1", **env, **AUDIT_ENV}, hardware="cpu", timeout_s=60, data_variant="sp1024",
                  script_files={"train_gpt.py": SCRIPT, "helper.py": b"X = 1\n", "unused.py": b"Y = 2\n"})
    handle = launcher.submit(launcher.acquire(7, "cpu"), job)
    status = wait_terminal(launcher, handle, 30)
    assert status.state is JobState.SUCCEEDED, launcher.read_log(handle, 0)
    touches = watched_touches(launcher.collect(handle, Path("/nonexistent")))
    facts = RunFacts.from_result(track="unlimited", hardware="cpu", allow_noncompliant=False, result={"touches": touches})
    return touches, {c.rule: c for c in check_run(facts)}


def test_a_clean_script_passes_with_its_setup_and_eval_reads_shown(launcher: LocalLauncher) -> None:
    touches, checks = run_script(launcher)
    assert touches["watched"] and touches["train_start"]["line_no"] == 1 and touches["train_end"]["line"].startswith("step:3/3")
    val = [(o["path"], o["phase"]) for o in touches["val_opens"]]
    shard = "data/datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    assert val == [(shard, SETUP), (shard, EVAL)]  # paths shown relative to the run folder
    assert checks["no_val_in_train"].verdict is Verdict.PASS and "opened at setup" in checks["no_val_in_train"].reason
    assert checks["no_network_in_eval"].verdict is Verdict.PASS
    assert touches["code_opened"] == ["helper.py", "train_gpt.py"]  # the module it imported; not unused.py


def test_a_val_shard_read_during_training_fails_naming_the_file_and_the_time(launcher: LocalLauncher) -> None:
    touches, checks = run_script(launcher, PEEK="1")
    assert [o["phase"] for o in touches["val_opens"]] == [SETUP, TRAIN, EVAL]
    check = checks["no_val_in_train"]
    assert check.verdict is Verdict.FAIL and check.figure == 1
    assert "fineweb_val_000000.bin during training at " in check.reason and " UTC (t+" in check.reason


def test_a_connection_during_evaluation_fails_naming_the_address(launcher: LocalLauncher) -> None:
    touches, checks = run_script(launcher, NET="1")
    assert [(c["address"], c["phase"]) for c in touches["connections"]] == [("192.0.2.7:443", EVAL)]
    check = checks["no_network_in_eval"]
    assert check.verdict is Verdict.FAIL and "192.0.2.7:443 during evaluation at " in check.reason
    assert checks["no_val_in_train"].verdict is Verdict.PASS


def test_loopback_and_training_time_connections_are_not_evaluation_network() -> None:
    log = b"setup\nstep:1/2 train_loss:3.0 train_time:5ms\nstep:2/2 train_loss:2.0 train_time:9ms\nfinal_x_exact val_loss:1 val_bpb:1\n"
    end = log.index(b"final")
    events = [{"t": 1.0, "event": "start", "cwd": "/r", "log": 0},
              {"t": 2.0, "event": "connect", "address": "10.0.0.5:29500", "log": 20},  # training (torchrun's store)
              {"t": 3.0, "event": "connect", "address": "127.0.0.1:29500", "log": end},  # eval, loopback
              {"t": 3.5, "event": "connect", "address": "/tmp/sock", "log": end}]
    touches = summarise(events, log)
    assert [c["phase"] for c in touches["connections"]] == [TRAIN, EVAL, EVAL]
    checks = {c.rule: c for c in check_run(RunFacts(track="unlimited", hardware="cpu", touches=touches))}
    assert checks["no_network_in_eval"].verdict is Verdict.PASS and "2 local connection(s)" in checks["no_network_in_eval"].reason


def test_what_cannot_be_placed_is_not_comparable_never_a_pass() -> None:
    no_log_size = summarise([{"t": 1.0, "event": "open", "path": "/r/data/fineweb_val_000000.bin", "mode": "rb"}], b"step:1/2 train_loss:3 train_time:1ms\n")
    for touches in ({"watched": False, "why": "no audit.jsonl"}, no_log_size, summarise([], b"no training here\n")):
        checks = {c.rule: c for c in check_run(RunFacts(track="unlimited", hardware="cpu", touches=touches))}
        assert checks["no_val_in_train"].verdict is Verdict.NOT_COMPARABLE
        assert checks["no_network_in_eval"].verdict is Verdict.NOT_COMPARABLE
    # the shared trainer is not watched: no network rule at all, no_val_in_train by fingerprints as before
    assert "no_network_in_eval" not in {c.rule for c in check_run(RunFacts(track="unlimited", hardware="cpu"))}


@pytest.mark.skipif(not RECORDS.is_dir(), reason="the challenge's records are not beside the repository")
def test_a_records_log_marks_its_first_step_and_its_training_end() -> None:
    log = (RECORDS / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611" / "train_seed42.log").read_bytes()
    marks = log_marks(log)
    assert marks.train_start is not None and marks.train_start.line == "warmup_step: 1/20"  # warm-up steps train too
    assert marks.train_end is not None and marks.train_end.line.startswith("stopping_early: wallclock_cap")
    assert log[marks.train_start.start :].startswith(b"warmup_step: 1/20") and marks.train_start.start < marks.train_end.start
