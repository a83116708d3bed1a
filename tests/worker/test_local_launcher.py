"""The local launcher on real subprocesses: a small stand-in trainer script, plus the real trainer when present."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from worker.launchers.base import JobSpec, JobState, JobStatus, Launcher, LaunchFailed, LaunchHandle, get_launcher
from worker.launchers.local import LocalLauncher
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]

# Stands in for `python -m trainer`; FAKE_MODE picks the behaviour.
FAKE_TRAINER = r'''
import json, os, signal, subprocess, sys, time
mode = os.environ.get("FAKE_MODE", "ok")
out = os.environ["OUTPUT_DIR"]
print("run_name:" + os.environ.get("RUN_NAME", ""), flush=True)
print("num_layers:" + os.environ.get("NUM_LAYERS", "?"), flush=True)
print("has_db_url:" + str("CADDIE_DATABASE_URL" in os.environ), flush=True)
print("data_path:" + os.environ.get("DATA_PATH", ""), flush=True)
if mode == "slow":
    time.sleep(float(os.environ.get("FAKE_SLEEP", "1.5")))
    mode = "ok"
if mode == "ok":
    for step in (1, 2):
        print(f"step:{step}/2 train_loss:{7 - step}.5 train_time:{step * 10}ms step_avg:10.00ms", flush=True)
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump({"status": "succeeded", "val_bpb": 1.5}, fh)
    sys.exit(0)
if mode == "fail":
    print("Traceback (most recent call last):", flush=True)
    print("RuntimeError: boom at step 3", flush=True)
    print("   (cleanup noise)", flush=True)
    sys.exit(3)
# "sleep" / "stubborn": a grandchild in the same group, then wait to be stopped
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(os.path.join(out, "pids.json"), "w") as fh:
    json.dump([os.getpid(), grandchild.pid], fh)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("sleeping", flush=True)
time.sleep(300)
'''


@pytest.fixture()
def settings(tmp_path: Path) -> WorkerSettings:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return WorkerSettings(home=tmp_path / "home", trainer_command=[sys.executable, str(script)], cancel_grace_s=2.0, gpu_count=0)


def job(run_id: int = 7, timeout_s: float = 60, **env: str) -> JobSpec:
    return JobSpec(run_id=run_id, env={"NUM_LAYERS": "3", **env}, hardware="local", timeout_s=timeout_s)


def wait_terminal(launcher: Launcher, handle: LaunchHandle, limit: float = 15) -> JobStatus:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        st = launcher.status(handle)
        if st.terminal:
            return st
        time.sleep(0.05)
    raise AssertionError(f"job not finished after {limit} s: {launcher.status(handle)}")


def wait_for_file(path: Path, limit: float = 10) -> None:
    end = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_get_launcher_gives_a_local_launcher(settings: WorkerSettings) -> None:
    launcher = get_launcher("local", settings)
    assert isinstance(launcher, LocalLauncher) and isinstance(launcher, Launcher)
    with pytest.raises(ValueError, match="unknown launcher"):
        get_launcher("slurm-by-hand", settings)


def test_trainer_command_uses_torchrun_over_all_local_gpus(tmp_path: Path) -> None:
    argv = LocalLauncher(WorkerSettings(home=tmp_path, gpu_count=4)).trainer_argv()
    assert argv[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "trainer"]
    assert LocalLauncher(WorkerSettings(home=tmp_path, gpu_count=0)).trainer_argv()[1:] == ["-m", "trainer"]


def test_success_log_offsets_outputs_and_env(settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_DATABASE_URL", "postgresql://user:secret@db/caddie")
    launcher = LocalLauncher(settings)
    cluster = launcher.acquire(7, "local")
    handle = launcher.submit(cluster, job())
    st = wait_terminal(launcher, handle)
    assert (st.state, st.exit_code) == (JobState.SUCCEEDED, 0)

    log = launcher.read_log(handle, 0)
    assert b"step:2/2 train_loss:5.5 train_time:20ms" in log
    assert b"num_layers:3" in log  # knobs arrive as env vars
    assert b"has_db_url:False" in log  # worker secrets stay out of the trainer's env
    assert launcher.read_log(handle, 10) == log[10:]
    assert launcher.read_log(handle, len(log)) == b""

    workdir = launcher.collect(handle, Path("/unused"))
    assert workdir == settings.runs_dir.resolve() / "7" / "attempt-1"
    assert json.loads((workdir / "result.json").read_text())["val_bpb"] == 1.5  # OUTPUT_DIR is the work dir
    data_path = [ln for ln in log.decode().splitlines() if ln.startswith("data_path:")][0]
    assert Path(data_path.split(":", 1)[1]).is_absolute()

    # a second attempt of the same run gets its own directory
    handle2 = launcher.submit(cluster, job())
    assert handle2.data["workdir"].endswith("attempt-2")
    wait_terminal(launcher, handle2)


def test_failure_reports_exit_code_and_the_error_line(settings: WorkerSettings) -> None:
    launcher = LocalLauncher(settings)
    handle = launcher.submit(launcher.acquire(8, "local"), job(run_id=8, FAKE_MODE="fail"))
    st = wait_terminal(launcher, handle)
    assert (st.state, st.exit_code) == (JobState.FAILED, 3)
    assert "RuntimeError: boom at step 3" in st.reason and "code 3" in st.reason


def test_worker_secrets_stay_out_but_knobs_named_like_them_pass(settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_SECRET_ACCESS_KEY": "s", "HF_TOKEN": "t", "TOKENIZER_PATH": "/data/tok.model", "TRAIN_BATCH_TOKENS": "4096"}.items():
        monkeypatch.setenv(k, v)
    env = LocalLauncher(settings)._child_env(job(), Path("/w"))
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_TOKEN" not in env
    assert env["TOKENIZER_PATH"] == "/data/tok.model" and env["TRAIN_BATCH_TOKENS"] == "4096"


def test_a_command_that_cannot_start_is_a_failed_job(tmp_path: Path) -> None:
    launcher = LocalLauncher(WorkerSettings(home=tmp_path, trainer_command=[str(tmp_path / "no-such-trainer")]))
    handle = launcher.submit(launcher.acquire(1, "local"), job(run_id=1))
    st = wait_terminal(launcher, handle)
    assert (st.state, st.exit_code) == (JobState.FAILED, 127)
    assert "cannot start trainer" in st.reason


def test_cancel_kills_the_whole_process_group_even_when_sigterm_is_ignored(settings: WorkerSettings) -> None:
    launcher = LocalLauncher(settings)
    handle = launcher.submit(launcher.acquire(9, "local"), job(run_id=9, FAKE_MODE="stubborn"))
    pids_file = Path(handle.data["workdir"]) / "pids.json"
    wait_for_file(pids_file)
    pids = json.loads(pids_file.read_text()) + [handle.data["pid"]]
    assert launcher.status(handle).state == JobState.RUNNING

    t0 = time.monotonic()
    launcher.cancel(handle)
    assert time.monotonic() - t0 < 10
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert launcher.status(handle).state == JobState.CANCELLED


def test_cancel_of_a_polite_trainer_is_quick(settings: WorkerSettings) -> None:
    launcher = LocalLauncher(settings)
    handle = launcher.submit(launcher.acquire(10, "local"), job(run_id=10, FAKE_MODE="sleep"))
    pids_file = Path(handle.data["workdir"]) / "pids.json"
    wait_for_file(pids_file)
    grandchild = json.loads(pids_file.read_text())[1]
    t0 = time.monotonic()
    launcher.cancel(handle)
    assert time.monotonic() - t0 < 3.0  # no SIGKILL escalation needed (that would take grace_s + 1.5 s)
    st = launcher.status(handle)
    assert st.state == JobState.CANCELLED and st.exit_code == -signal.SIGTERM
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_reattach_from_the_json_handle_after_a_worker_restart(settings: WorkerSettings) -> None:
    first = LocalLauncher(settings)
    handle = first.submit(first.acquire(11, "local"), job(run_id=11, FAKE_MODE="sleep"))
    stored = json.dumps(handle.to_json())  # what the executor keeps in runs.launch_handle
    wait_for_file(Path(handle.data["workdir"]) / "pids.json")
    del first  # the worker that started it is gone

    again = LocalLauncher(WorkerSettings(**settings.model_dump()))
    restored = LaunchHandle.from_json(json.loads(stored))
    assert again.status(restored).state == JobState.RUNNING
    assert b"sleeping" in again.read_log(restored, 0)
    again.cancel(restored)
    assert again.status(restored).state == JobState.CANCELLED

    done = again.submit(again.acquire(11, "local"), job(run_id=11))
    stored = json.dumps(done.to_json())
    assert wait_terminal(LocalLauncher(settings), LaunchHandle.from_json(json.loads(stored))).state == JobState.SUCCEEDED


SPAWN_AND_DIE = """
import json, os, signal, sys
from worker.launchers.base import JobSpec
from worker.launchers.local import LocalLauncher
from worker.settings import WorkerSettings
launcher = LocalLauncher(WorkerSettings.model_validate_json(sys.argv[1]))
handle = launcher.submit(launcher.acquire(16, "local"), JobSpec(16, {"FAKE_MODE": "slow"}, "local", 60))
print(json.dumps(handle.to_json()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the worker dies the hard way
"""


def test_the_job_outlives_a_killed_worker_and_its_exit_code_is_recovered(settings: WorkerSettings) -> None:
    import subprocess

    worker = subprocess.run(
        [sys.executable, "-c", SPAWN_AND_DIE, settings.model_dump_json()], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert worker.returncode == -signal.SIGKILL
    handle = LaunchHandle.from_json(json.loads(worker.stdout.splitlines()[-1]))
    launcher = LocalLauncher(settings)  # the next worker
    assert launcher.status(handle).state == JobState.RUNNING
    st = wait_terminal(launcher, handle)
    assert (st.state, st.exit_code) == (JobState.SUCCEEDED, 0)
    assert b"step:2/2" in launcher.read_log(handle, 0)


def test_lost_when_the_processes_vanish_without_an_exit_code(settings: WorkerSettings) -> None:
    launcher = LocalLauncher(settings)
    handle = launcher.submit(launcher.acquire(12, "local"), job(run_id=12, FAKE_MODE="sleep"))
    workdir = Path(handle.data["workdir"])
    wait_for_file(workdir / "pids.json")
    child = json.loads((workdir / "child.json").read_text())
    os.kill(handle.data["pid"], signal.SIGKILL)  # the wrapper dies first (as in an OOM kill) ...
    time.sleep(0.2)
    assert launcher.status(handle).state == JobState.RUNNING  # ... the trainer still runs
    os.killpg(child["pgid"], signal.SIGKILL)  # ... then the trainer's whole group
    end = time.monotonic() + 5
    while launcher.status(handle).state == JobState.RUNNING and time.monotonic() < end:
        time.sleep(0.05)
    st = launcher.status(handle)
    assert st.state == JobState.LOST and "no exit code" in st.reason


def test_a_reused_pid_is_not_mistaken_for_the_job(settings: WorkerSettings, tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    # our own pid is alive, but it was not started at this time: not our job
    fake = LaunchHandle("local", "local", "1/attempt-1", {"pid": os.getpid(), "pgid": os.getpid(), "create_time": 1.0, "workdir": str(workdir)})
    assert LocalLauncher(settings).status(fake).state == JobState.LOST


def test_free_text_in_env_never_reaches_a_shell(settings: WorkerSettings, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = f"$(touch {marker}); touch {marker} `touch {marker}` && echo"
    launcher = LocalLauncher(settings)
    handle = launcher.submit(launcher.acquire(13, "local"), job(run_id=13, RUN_NAME=name))
    assert wait_terminal(launcher, handle).state == JobState.SUCCEEDED
    assert not marker.exists()
    assert f"run_name:{name}".encode() in launcher.read_log(handle, 0)


def test_bad_env_name_is_a_launch_failure(settings: WorkerSettings) -> None:
    launcher = LocalLauncher(settings)
    with pytest.raises(LaunchFailed, match="environment variable name"):
        launcher.submit(launcher.acquire(14, "local"), JobSpec(14, {"NOT VALID=1": "x"}, "local", 60))


def test_wrapper_enforces_the_hard_timeout_without_a_worker(settings: WorkerSettings) -> None:
    launcher = LocalLauncher(settings)
    handle = launcher.submit(launcher.acquire(15, "local"), job(run_id=15, timeout_s=1.0, FAKE_MODE="sleep"))
    st = wait_terminal(launcher, handle, limit=10)
    assert st.state == JobState.FAILED and "hard timeout" in st.reason
    assert b"caddie: hard timeout" in launcher.read_log(handle, 0)


# A few steps of a 2-layer model with every feature of the stack on (CPU, seconds).
TINY_TRAINER = {
    "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64",
    "TRAIN_BATCH_TOKENS": "512", "GRAD_ACCUM_STEPS": "2", "ITERATIONS": "6", "WARMUP_STEPS": "1", "WARMDOWN_ITERS": "3",
    "MAX_WALLCLOCK_SECONDS": "0", "XSA_LAST_N": "1", "BIGRAM_VOCAB_SIZE": "128", "BIGRAM_DIM": "16", "ROPE_DIMS": "8",
    "VAL_TOKENS_LIMIT": "2048", "EVAL_STRIDE": "32", "EVAL_BATCH_SEQS": "8", "TTT_CHUNK_TOKENS": "512", "TTT_EPOCHS": "1",
    "TTT_BATCH_SEQS": "4", "TRAIN_LOG_EVERY": "2", "VAL_LOSS_EVERY": "3", "ZSTD_LEVEL": "3",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = pytest.importorskip("trainer.data")
    paths = data.build_smoke_corpus(tmp_path_factory.mktemp("corpus"), vocab_size=1024)
    return {"DATA_PATH": str(paths.data_path), "TOKENIZER_PATH": str(paths.tokenizer_path)}


TRAINER_MODULES = ("data", "bpb", "evaluate", "model", "optim", "quant", "train")


@pytest.mark.skipif(
    not all((REPO / "trainer" / f"{m}.py").exists() for m in TRAINER_MODULES), reason="the trainer has not fully landed yet"
)
def test_the_real_trainer_through_the_launcher(tmp_path: Path, tiny_corpus: dict[str, str]) -> None:
    """`python -m trainer` end to end: SUCCEEDED, outputs in the work dir, and the log parses into the result's numbers."""
    from worker.logparse import parse_text

    launcher = LocalLauncher(WorkerSettings(home=tmp_path, gpu_count=0))
    handle = launcher.submit(launcher.acquire(21, "local"), JobSpec(21, {**TINY_TRAINER, **tiny_corpus}, "local", 240))
    st = wait_terminal(launcher, handle, limit=240)
    log = launcher.read_log(handle, 0).decode()
    assert st.state == JobState.SUCCEEDED, log[-2000:]

    out = launcher.collect(handle, tmp_path / "unused")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded" and (out / "model.int6.ptz").stat().st_size == result["model_bytes"]
    assert (out / "train.log").exists() and (out / "metrics.jsonl").exists()

    # what the worker parses from the log agrees with what the trainer wrote for machines
    points, summary = parse_text(log)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(p.kind, p.step) for p in points] == [(m["kind"], m["step"]) for m in metrics]
    assert {p.kind for p in points} == {"train", "val"}
    for p, m in zip(points, metrics, strict=True):
        assert p.elapsed_ms == pytest.approx(m["elapsed_ms"], abs=1)
        for key in ("train_loss", "val_loss", "val_bpb"):
            assert getattr(p, key) == (pytest.approx(m[key], abs=1e-4) if key in m else None)
    assert (summary.code_bytes, summary.model_bytes, summary.total_bytes) == (result["code_bytes"], result["model_bytes"], result["total_bytes"])
    assert summary.final is not None and summary.final["val_bpb"] == pytest.approx(result["val_bpb"], abs=1e-6)
