"""The local launcher running a team's own script: its files in a fresh run folder, the
data variant linked in, torchrun (or python) in that folder, an allow-listed environment
plus the spec's env."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from service.core.settings import Settings
from worker.launchers.base import JobSpec, JobState, LaunchFailed
from worker.launchers.local import LocalLauncher

SCRIPT = rb'''
import os, sys
from pkg.helper import WHERE
print("helper:" + WHERE, flush=True)
print("cwd_is_run_folder:" + str(os.path.samefile(os.getcwd(), os.path.dirname(os.path.abspath(__file__)))), flush=True)
for name in ("SEED", "RUN_ID", "NUM_LAYERS", "NOTE", "DATA_PATH", "TOKENIZER_PATH"):
    print(f"{name}={os.environ.get(name)}", flush=True)
print("worker_env:" + ",".join(sorted(k for k in os.environ if k.startswith("CADDIE_") or k == "PYTHONPATH")), flush=True)
print("shards:" + ",".join(sorted(os.listdir(os.environ["DATA_PATH"]))), flush=True)
'''


@pytest.fixture()
def launcher(tmp_path: Path) -> LocalLauncher:
    data = tmp_path / "data"
    (data / "datasets" / "fineweb10B_sp1024").mkdir(parents=True)
    (data / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin").write_bytes(b"")
    return LocalLauncher(Settings(home=tmp_path / "home", data_root=data, gpu_count=0))


def script_job(**env: str) -> JobSpec:
    files = {"train_gpt.py": SCRIPT, "pkg/__init__.py": b"", "pkg/helper.py": b"WHERE = 'beside'\n"}
    return JobSpec(run_id=3, env={"SEED": "42", "RUN_ID": "caddie-run-3", "NUM_LAYERS": "11", "NOTE": "$(touch pwned); a b", **env},
                   hardware="cpu", timeout_s=60, data_variant="sp1024", script_files=files)


def wait(launcher: LocalLauncher, handle, limit: float = 20) -> JobState:
    end = time.monotonic() + limit
    while (status := launcher.status(handle)).state in (JobState.PENDING, JobState.RUNNING):
        assert time.monotonic() < end, "the script did not finish"
        time.sleep(0.05)
    return status.state


def test_a_script_runs_in_a_fresh_folder_with_its_files_data_and_only_its_env(launcher: LocalLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_DATABASE_URL", "postgresql://secret@db/caddie")
    handle = launcher.submit(launcher.acquire(3, "cpu"), script_job())
    assert wait(launcher, handle) is JobState.SUCCEEDED
    log = launcher.read_log(handle, 0).decode()
    assert "helper:beside" in log and "cwd_is_run_folder:True" in log
    assert "SEED=42" in log and "RUN_ID=caddie-run-3" in log and "NUM_LAYERS=11" in log and "NOTE=$(touch pwned); a b" in log
    assert "DATA_PATH=./data/datasets/fineweb10B_sp1024" in log and "TOKENIZER_PATH=./data/tokenizers/fineweb_1024_bpe.model" in log
    assert "worker_env:\n" in log and "shards:fineweb_val_000000.bin" in log
    folder = Path(handle.data["workdir"])
    assert (folder / "train_gpt.py").read_bytes() == SCRIPT and (folder / "data").is_symlink() and not (folder / "pwned").exists()
    # A second attempt gets a fresh folder.
    again = launcher.submit(launcher.acquire(3, "cpu"), script_job())
    assert Path(again.data["workdir"]) != folder
    wait(launcher, again)


def test_the_script_runs_under_torchrun_over_the_machines_gpus(tmp_path: Path) -> None:
    launcher = LocalLauncher(Settings(home=tmp_path, gpu_count=8))
    assert launcher.script_argv() == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "train_gpt.py"]
    assert LocalLauncher(Settings(home=tmp_path, gpu_count=0)).script_argv() == [sys.executable, "train_gpt.py"]


@pytest.mark.parametrize("name", ["RANK", "WORLD_SIZE", "LD_PRELOAD", "PYTHONPATH", "CADDIE_DATABASE_URL", "DATA_PATH"])
def test_a_reserved_name_never_reaches_the_script(launcher: LocalLauncher, name: str) -> None:
    with pytest.raises(LaunchFailed, match=name):
        launcher.submit(launcher.acquire(3, "cpu"), script_job(**{name: "x"}))


@pytest.mark.parametrize("name", ["../escape.py", "/tmp/abs.py", "data/x.bin"])
def test_a_file_name_that_leaves_the_folder_is_refused(launcher: LocalLauncher, name: str, tmp_path: Path) -> None:
    job = script_job()
    job.script_files[name] = b"x"
    with pytest.raises(LaunchFailed, match="cannot be placed"):
        launcher.submit(launcher.acquire(3, "cpu"), job)
    assert not (tmp_path / "escape.py").exists() and not Path("/tmp/abs.py").exists()


def test_a_data_variant_missing_on_this_machine_is_named_with_how_to_fetch_it(launcher: LocalLauncher) -> None:
    job = script_job()
    job.data_variant = "sp8192"
    with pytest.raises(LaunchFailed, match=r"sp8192 is not on this machine.*trainer.data download --variant sp8192"):
        launcher.submit(launcher.acquire(3, "cpu"), job)


def test_the_audit_hook_watches_a_script_through_the_launcher(launcher: LocalLauncher) -> None:
    """script_runs.script_job's AUDIT_ENV passes the launcher's env check and loads the hook:
    the run folder gets audit.jsonl with the data the script opened, the script unchanged."""
    import json

    from worker.launchers.trainer_env import AUDIT_ENV

    handle = launcher.submit(launcher.acquire(3, "cpu"), script_job(**AUDIT_ENV))
    assert wait(launcher, handle) is JobState.SUCCEEDED
    audit = Path(handle.data["workdir"]) / "audit.jsonl"
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    opened = {e["path"] for e in events if e["event"] == "open"}
    assert opened and all(e["pid"] and e["t"] > 0 for e in events), events  # the interpreter's own opens at least
    assert (Path(handle.data["workdir"]) / "train_gpt.py").read_bytes() == SCRIPT
    with pytest.raises(LaunchFailed, match="PYTHONPATH"):  # any other PYTHONPATH is still refused
        launcher.submit(launcher.acquire(3, "cpu"), script_job(PYTHONPATH="/tmp"))
