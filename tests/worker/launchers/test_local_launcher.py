"""The local launcher on real subprocesses: a small stand-in trainer script, plus the real trainer when present."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from service.core.settings import Settings
from worker.launchers import get_launcher
from worker.launchers.base import (
    JobSpec,
    JobState,
    JobStatus,
    Launcher,
    LaunchFailed,
    LaunchHandle,
)
from worker.launchers.local import LocalLauncher

REPO = Path(__file__).resolve().parents[3]

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
# Written whole, then renamed into place: the test reads it as soon as it appears.
with open(os.path.join(out, "pids.json.tmp"), "w") as fh:
    json.dump([os.getpid(), grandchild.pid], fh)
os.replace(os.path.join(out, "pids.json.tmp"), os.path.join(out, "pids.json"))
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("sleeping", flush=True)
time.sleep(300)
'''


class StandInLauncher(LocalLauncher):
    """The local launcher, also passing the stand-in's own FAKE_* and RUN_NAME settings.

    The real launcher passes a run's trainer knobs only; these are the test's, not a run's.
    """

    def _child_env(self, job: JobSpec, workdir: Path) -> dict[str, str]:
        own = {k: v for k, v in job.env.items() if k.startswith("FAKE_") or k == "RUN_NAME"}
        env = super()._child_env(replace(job, env={k: v for k, v in job.env.items() if k not in own}), workdir)
        return {**env, **own}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return Settings(home=tmp_path / "home", trainer_command=[sys.executable, str(script)], cancel_grace_s=2.0, gpu_count=0)


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


def left_in(workdir: Path) -> list[psutil.Process]:
    """Live host processes working in `workdir`: what a job left running."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.cwd() == str(workdir) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def wait_for_file(path: Path, limit: float = 10) -> None:
    end = time.monotonic() + limit
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_get_launcher_gives_a_local_launcher(settings: Settings) -> None:
    launcher = get_launcher("local", settings)
    assert isinstance(launcher, LocalLauncher) and isinstance(launcher, Launcher)
    with pytest.raises(ValueError, match="unknown launcher"):
        get_launcher("slurm-by-hand", settings)


def test_trainer_command_uses_torchrun_over_all_local_gpus(tmp_path: Path) -> None:
    argv = LocalLauncher(Settings(home=tmp_path, gpu_count=4)).trainer_argv()
    assert argv[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "trainer"]
    assert LocalLauncher(Settings(home=tmp_path, gpu_count=0)).trainer_argv()[1:] == ["-m", "trainer"]


def test_success_log_offsets_outputs_and_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_DATABASE_URL", "postgresql://user:secret@db/caddie")
    launcher = StandInLauncher(settings)
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
    # the data variant's folders, relative to the work dir, whose `data` links to the data root
    assert b"data_path:./data/datasets/fineweb10B_sp1024\n" in log
    assert (workdir / "data").resolve() == settings.data_root.resolve()

    # a second attempt of the same run gets its own directory
    handle2 = launcher.submit(cluster, job())
    assert handle2.data["workdir"].endswith("attempt-2")
    wait_terminal(launcher, handle2)


def test_failure_reports_exit_code_and_the_error_line(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(8, "local"), job(run_id=8, FAKE_MODE="fail"))
    st = wait_terminal(launcher, handle)
    assert (st.state, st.exit_code) == (JobState.FAILED, 3)
    assert "RuntimeError: boom at step 3" in st.reason and "code 3" in st.reason


SECRETS = {
    "PGPASSWORD": "pg", "DATABASE_URL": "postgresql://u:p@db/x", "REDIS_URL": "redis://:p@r:6379/0", "WANDB_API_KEY": "w",
    "OPENAI_API_KEY": "sk-x", "GITHUB_PAT": "ghp_x", "AWS_SECRET_ACCESS_KEY": "s", "HF_TOKEN": "t", "CADDIE_DATABASE_URL": "postgresql://c",
    "CADDIE_S3_BUCKET": "b", "LD_PRELOAD": "/tmp/evil.so", "PYTHONSTARTUP": "/tmp/evil.py",
}  # fmt: skip
ALLOWED = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp", "CUDA_VISIBLE_DEVICES": "0,1", "NCCL_SOCKET_IFNAME": "eth0", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}

DUMP_ENV = r"""
import json, os
with open("env.json", "w") as fh:
    json.dump(dict(os.environ), fh)
"""


def test_the_trainer_environment_is_an_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real stand-in trainer sees PATH, HOME, the locale, GPU and NCCL settings and its knobs: no worker secret, whatever its name."""
    for k, v in {**SECRETS, **ALLOWED, "TOKENIZER_PATH": "/etc/passwd", "NUM_LAYERS": "99"}.items():
        monkeypatch.setenv(k, v)
    script = tmp_path / "dump_env.py"
    script.write_text(DUMP_ENV)
    launcher = LocalLauncher(Settings(home=tmp_path / "home", trainer_command=[sys.executable, str(script)], gpu_count=0))
    handle = launcher.submit(launcher.acquire(17, "local"), job(run_id=17, TRAIN_BATCH_TOKENS="4096"))
    assert wait_terminal(launcher, handle).state == JobState.SUCCEEDED
    seen = json.loads((Path(handle.data["workdir"]) / "env.json").read_text())
    assert not set(SECRETS) & set(seen), set(SECRETS) & set(seen)
    assert not [k for k in seen if k.startswith("CADDIE_")]
    assert {k: seen.get(k) for k in ALLOWED} == ALLOWED and seen["PATH"] == os.environ["PATH"]
    assert seen["HOME"] == handle.data["workdir"]  # the sandbox's home is the run folder (the worker's is not there)
    # the run's knobs, not the worker's; the paths are caddie's, from the data variant
    assert (seen["NUM_LAYERS"], seen["TRAIN_BATCH_TOKENS"]) == ("3", "4096")
    assert (seen["DATA_PATH"], seen["TOKENIZER_PATH"], seen["OUTPUT_DIR"]) == (
        "./data/datasets/fineweb10B_sp1024", "./data/tokenizers/fineweb_1024_bpe.model", ".")
    assert seen["PYTHONPATH"] == str(REPO)


def test_a_run_cannot_name_the_data_paths_or_pass_what_is_not_a_knob(settings: Settings, tmp_path: Path) -> None:
    env = LocalLauncher(settings)._child_env(
        JobSpec(18, {"DATA_PATH": "/etc", "TOKENIZER_PATH": "/etc/passwd", "OUTPUT_DIR": "/", "VOCAB_SIZE": "4096"}, "local", 60, "sp4096"),
        tmp_path,
    )
    assert (env["DATA_PATH"], env["TOKENIZER_PATH"], env["OUTPUT_DIR"]) == (
        "./data/datasets/fineweb10B_sp4096", "./data/tokenizers/fineweb_4096_bpe.model", ".")
    for bad in ({"LD_PRELOAD": "/tmp/x.so"}, {"PGPASSWORD": "x"}):
        with pytest.raises(LaunchFailed, match="not a trainer knob"):
            LocalLauncher(settings)._child_env(JobSpec(18, bad, "local", 60), tmp_path)
    with pytest.raises(LaunchFailed, match="data variant"):
        LocalLauncher(settings)._child_env(JobSpec(18, {}, "local", 60, "../../etc"), tmp_path)


def test_a_command_that_cannot_start_is_a_failed_job(tmp_path: Path) -> None:
    launcher = LocalLauncher(Settings(home=tmp_path, trainer_command=[str(tmp_path / "no-such-trainer")]))
    handle = launcher.submit(launcher.acquire(1, "local"), job(run_id=1))
    st = wait_terminal(launcher, handle)
    # in the sandbox bwrap's exec fails (exit 1); the reason names the command either way
    assert st.state == JobState.FAILED and st.exit_code != 0
    assert "no-such-trainer" in st.reason


def test_cancel_kills_the_whole_process_group_even_when_sigterm_is_ignored(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(9, "local"), job(run_id=9, FAKE_MODE="stubborn"))
    pids_file = Path(handle.data["workdir"]) / "pids.json"
    wait_for_file(pids_file)
    pids = [handle.data["pid"], *(p.pid for p in left_in(Path(handle.data["workdir"])))]  # host pids (pids.json has the sandbox's)
    assert len(pids) >= 3 and launcher.status(handle).state == JobState.RUNNING

    t0 = time.monotonic()
    launcher.cancel(handle)
    assert time.monotonic() - t0 < 10
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert launcher.status(handle).state == JobState.CANCELLED


def test_cancel_of_a_polite_trainer_is_quick(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(10, "local"), job(run_id=10, FAKE_MODE="sleep"))
    pids_file = Path(handle.data["workdir"]) / "pids.json"
    wait_for_file(pids_file)
    assert left_in(Path(handle.data["workdir"]))
    t0 = time.monotonic()
    launcher.cancel(handle)
    assert time.monotonic() - t0 < 3.0  # no SIGKILL escalation needed (that would take grace_s + 1.5 s)
    st = launcher.status(handle)
    assert st.state == JobState.CANCELLED and st.exit_code == -signal.SIGTERM
    assert not left_in(Path(handle.data["workdir"]))  # the grandchild too


def test_reattach_from_the_json_handle_after_a_worker_restart(settings: Settings) -> None:
    first = StandInLauncher(settings)
    handle = first.submit(first.acquire(11, "local"), job(run_id=11, FAKE_MODE="sleep"))
    stored = json.dumps(handle.to_json())  # what the executor keeps in runs.launch_handle
    wait_for_file(Path(handle.data["workdir"]) / "pids.json")
    del first  # the worker that started it is gone

    again = StandInLauncher(Settings(**settings.model_dump()))
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
from service.core.settings import Settings
from tests.worker.launchers.test_local_launcher import StandInLauncher
launcher = StandInLauncher(Settings.model_validate_json(sys.argv[1]))
handle = launcher.submit(launcher.acquire(16, "local"), JobSpec(16, {"FAKE_MODE": "slow"}, "local", 60))
print(json.dumps(handle.to_json()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the worker dies the hard way
"""


def test_the_job_outlives_a_killed_worker_and_its_exit_code_is_recovered(settings: Settings) -> None:
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


def test_lost_when_the_processes_vanish_without_an_exit_code(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(12, "local"), job(run_id=12, FAKE_MODE="sleep"))
    workdir = Path(handle.data["workdir"])
    wait_for_file(workdir / "pids.json")
    wait_for_file(workdir / "child.json")  # the stand-in writes it after the wrapper's pids.json
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


def test_a_trainer_killed_by_a_signal_is_reported_as_such(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(19, "local"), job(run_id=19, FAKE_MODE="sleep"))
    workdir = Path(handle.data["workdir"])
    wait_for_file(workdir / "pids.json")
    wait_for_file(workdir / "child.json")  # the wrapper writes it once the trainer started: it may come after pids.json
    os.killpg(json.loads((workdir / "child.json").read_text())["pgid"], signal.SIGKILL)  # the OOM killer, say
    st = wait_terminal(launcher, handle)
    assert (st.state, st.exit_code) == (JobState.FAILED, -signal.SIGKILL)
    assert st.reason.startswith("trainer killed by signal 9 (SIGKILL)") and "sleeping" not in st.reason  # not its last log line


@pytest.mark.parametrize(("rc", "expected"), [(-9, "signal 9 (SIGKILL)"), (137, "signal 9 (SIGKILL)"), (-15, "signal 15 (SIGTERM)"),
                                              (139, "signal 11 (SIGSEGV)"), (1, ""), (2, ""), (0, ""), (128, ""), (255, "")])
def test_signal_of_exit(rc: int, expected: str) -> None:
    from worker.launchers.local import signal_of_exit

    assert signal_of_exit(rc).split(":")[0] == expected


def test_a_reused_pid_is_not_mistaken_for_the_job(settings: Settings, tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    # our own pid is alive, but it was not started at this time: not our job
    fake = LaunchHandle("local", "local", "1/attempt-1", {"pid": os.getpid(), "pgid": os.getpid(), "create_time": 1.0, "workdir": str(workdir)})
    assert LocalLauncher(settings).status(fake).state == JobState.LOST


def test_free_text_in_env_never_reaches_a_shell(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = f"$(touch {marker}); touch {marker} `touch {marker}` && echo"
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(13, "local"), job(run_id=13, RUN_NAME=name))
    assert wait_terminal(launcher, handle).state == JobState.SUCCEEDED
    assert not marker.exists()
    assert f"run_name:{name}".encode() in launcher.read_log(handle, 0)


def test_bad_env_name_is_a_launch_failure(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    with pytest.raises(LaunchFailed, match="not a trainer knob"):
        launcher.submit(launcher.acquire(14, "local"), JobSpec(14, {"NOT VALID=1": "x"}, "local", 60))


def test_wrapper_enforces_the_hard_timeout_without_a_worker(settings: Settings) -> None:
    launcher = StandInLauncher(settings)
    handle = launcher.submit(launcher.acquire(15, "local"), job(run_id=15, timeout_s=1.0, FAKE_MODE="sleep"))
    st = wait_terminal(launcher, handle, limit=10)
    assert st.state == JobState.FAILED and "hard timeout" in st.reason
    assert b"caddie: hard timeout" in launcher.read_log(handle, 0)


# A few steps of a 2-layer model with every feature of the stack on (CPU, seconds).
TINY_TRAINER = {
    "STACK": "2026-03-23", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64",
    "TRAIN_BATCH_TOKENS": "512", "GRAD_ACCUM_STEPS": "2", "ITERATIONS": "6", "WARMUP_STEPS": "1", "WARMDOWN_ITERS": "3",
    "MAX_WALLCLOCK_SECONDS": "0", "XSA_LAST_N": "1", "BIGRAM_VOCAB_SIZE": "128", "BIGRAM_DIM": "16", "ROPE_DIMS": "8",
    "VAL_TOKENS_LIMIT": "2048", "EVAL_STRIDE": "32", "EVAL_BATCH_SEQS": "8", "TTT_CHUNK_TOKENS": "512", "TTT_EPOCHS": "1",
    "TTT_BATCH_SEQS": "4", "TRAIN_LOG_EVERY": "2", "VAL_LOSS_EVERY": "3", "ZSTD_LEVEL": "3",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = pytest.importorskip("trainer.data")
    paths = data.build_smoke_corpus(tmp_path_factory.mktemp("corpus"), vocab_size=1024)
    return paths.root  # the data root: datasets/fineweb10B_sp1024, tokenizers/fineweb_1024_bpe.model


TRAINER_MODULES = ("data", "bpb", "evaluate", "model", "optim", "quant", "train")


@pytest.mark.skipif(
    not all((REPO / "trainer" / f"{m}.py").exists() for m in TRAINER_MODULES), reason="the trainer has not fully landed yet"
)
def test_the_real_trainer_through_the_launcher(tmp_path: Path, tiny_corpus: Path) -> None:
    """`python -m trainer` end to end: SUCCEEDED, outputs in the work dir, and the log parses into the result's numbers."""
    from service.runs.logparse import parse_text

    launcher = LocalLauncher(Settings(home=tmp_path, gpu_count=0, data_root=tiny_corpus))
    handle = launcher.submit(launcher.acquire(21, "local"), JobSpec(21, TINY_TRAINER, "local", 240))
    st = wait_terminal(launcher, handle, limit=240)
    log = launcher.read_log(handle, 0).decode()
    assert st.state == JobState.SUCCEEDED, log[-2000:]
    assert str(tmp_path) not in log and str(tiny_corpus) not in log  # the run's log names no path of the worker's

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
