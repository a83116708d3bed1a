"""A team's compile cache on the real local launcher, in the real sandbox: a team's later job finds what its
earlier job compiled (here, a file it wrote where TORCHINDUCTOR_CACHE_DIR points), another team's job sees
neither the entry nor the folder, the worker's own cache variables never reach a job, what a job adds to the
cache counts toward its disk limit, and the folder is trimmed to its limit, oldest first. One real
torch.compile as well: the second job of a team reads the first one's compiled graph from the cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from service.core.settings import Settings
from worker.launchers import compile_cache
from worker.launchers.base import JobSpec, JobState, LaunchHandle
from worker.launchers.local import LocalLauncher

needs_bwrap = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap is not installed")

PROBE = rb"""
import json, os, sys
cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
seen = sorted(os.listdir(cache)) if cache else None
other = os.environ["OTHER_TEAM_CACHE"]
try:
    os.listdir(other)
    reach = "reached"
except OSError as exc:
    reach = type(exc).__name__
if cache and os.environ.get("WRITE"):
    with open(os.path.join(cache, os.environ["WRITE"]), "w") as fh:
        fh.write("compiled")
if cache and os.environ.get("FILL"):
    with open(os.path.join(cache, "big.bin"), "wb") as fh:
        for _ in range(int(os.environ["FILL"])):
            fh.write(b"\1" * (1 << 20))
            fh.flush()
            __import__("time").sleep(0.01)
print("probe:" + json.dumps({"cache": cache, "triton": os.environ.get("TRITON_CACHE_DIR"), "seen": seen, "other": reach}), flush=True)
"""


def launcher_at(tmp_path: Path, **settings: object) -> LocalLauncher:
    data = tmp_path / "data"
    (data / "datasets" / "fineweb10B_sp1024").mkdir(parents=True, exist_ok=True)
    return LocalLauncher(Settings(home=tmp_path / "home", data_root=data, gpu_count=0, **settings))  # type: ignore[arg-type]


def run_probe(launcher: LocalLauncher, team_id: int | None, run_id: int, **env: str) -> tuple[JobState, dict, LaunchHandle]:
    other = launcher.settings.compile_cache_dir / "team-1"  # type: ignore[operator]
    job = JobSpec(run_id=run_id, env={"SEED": "1", "RUN_ID": f"caddie-run-{run_id}", "OTHER_TEAM_CACHE": str(other), **env},
                  hardware="cpu", timeout_s=60, script_files={"train_gpt.py": PROBE}, team_id=team_id)
    state, log, handle = finish(launcher, job, 60)
    line = next((x for x in log.splitlines() if x.startswith("probe:")), None)
    return state, json.loads(line.removeprefix("probe:")) if line else {"log": log}, handle


def finish(launcher: LocalLauncher, job: JobSpec, limit_s: float) -> tuple[JobState, str, LaunchHandle]:
    """Submit ``job`` and wait for it to end; its state, its log and its handle."""
    handle = launcher.submit(launcher.acquire(job.run_id, "cpu"), job)
    end = time.monotonic() + limit_s
    while (status := launcher.status(handle)).state in (JobState.PENDING, JobState.RUNNING):
        assert time.monotonic() < end, f"job {job.run_id} did not finish in {limit_s:.0f} s"
        time.sleep(0.05)
    return status.state, launcher.read_log(handle, 0).decode(), handle


@needs_bwrap
def test_a_teams_later_job_finds_its_cache_and_no_other_team_sees_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "shared-by-all"))  # an operator's machine-wide folder
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "shared-by-all"))
    launcher = launcher_at(tmp_path)
    root = launcher.settings.compile_cache_dir.resolve()  # type: ignore[union-attr]

    state, first, handle = run_probe(launcher, 1, 11, WRITE="graph-a")
    assert state is JobState.SUCCEEDED, first
    assert handle.data["compile_cache"].startswith("the team's, empty")  # what the run's RUNNING event says
    assert first["cache"] == str(root / "team-1" / "inductor") and first["triton"] == str(root / "team-1" / "triton")
    assert first["seen"] == [] and (root / "team-1" / "inductor" / "graph-a").read_text() == "compiled"

    state, second, handle = run_probe(launcher, 1, 12)
    assert state is JobState.SUCCEEDED and second["seen"] == ["graph-a"]  # the team's next job finds it
    assert handle.data["compile_cache"].startswith("the team's, 1 file (")

    state, other, _ = run_probe(launcher, 2, 13, WRITE="graph-b")
    assert state is JobState.SUCCEEDED, other
    assert other["cache"] == str(root / "team-2" / "inductor") and other["seen"] == []
    assert other["other"] == "FileNotFoundError"  # team 1's folder is not in team 2's sandbox at all
    assert not (root / "team-1" / "inductor" / "graph-b").exists() and not (tmp_path / "shared-by-all").exists()


@needs_bwrap
def test_without_a_team_or_with_the_cache_off_a_job_compiles_in_its_own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "shared-by-all"))
    for launcher, team in ((launcher_at(tmp_path / "a"), None), (launcher_at(tmp_path / "b", compile_cache_bytes=0), 1)):
        state, probe, _ = run_probe(launcher, team, 21)
        assert state is JobState.SUCCEEDED and probe["cache"] is None and probe["triton"] is None, probe
        assert not launcher.settings.compile_cache_dir.exists()  # type: ignore[union-attr]


@needs_bwrap
def test_what_a_job_adds_to_its_teams_cache_counts_toward_its_disk_limit(tmp_path: Path) -> None:
    launcher = launcher_at(tmp_path, job_disk_bytes=16 << 20)
    state, probe, handle = run_probe(launcher, 1, 31, FILL="64")  # 64 MiB into the cache, 16 MiB allowed
    assert state is JobState.FAILED, probe
    reason = json.loads((Path(handle.data["workdir"]) / "exit_code.json").read_text())["limit_exceeded"]
    assert "disk" in reason and "CADDIE_JOB_DISK_BYTES" in reason


def test_a_cache_over_its_limit_is_trimmed_oldest_first(tmp_path: Path) -> None:
    folder = compile_cache.team_folder(tmp_path, 7)
    for n in range(10):  # 10 files of 100 KiB, each written a minute after the one before
        f = folder / ("inductor" if n % 2 else "triton") / f"k{n}" / "entry.bin"
        f.parent.mkdir(parents=True)
        f.write_bytes(os.urandom(100 << 10))
        os.utime(f, (1_000_000 + 60 * n, 1_000_000 + 60 * n))
    assert compile_cache.trim(folder, 2 << 20).freed == 0  # under the limit: nothing goes
    held = compile_cache.trim(folder, 500 << 10)  # 1,000 KiB held, 500 KiB allowed: down to 400 KiB
    left = sorted(p.parent.name for p in folder.rglob("entry.bin"))
    assert left == ["k6", "k7", "k8", "k9"] and held.freed >= 600 << 10 and held.files == 4 and held.bytes <= 400 << 10
    assert "of the oldest trimmed" in held.describe()
    assert not (folder / "triton" / "k0").exists() and (folder / "inductor").is_dir() and (folder / "triton").is_dir()


@needs_bwrap
def test_no_trim_deletes_from_a_cache_while_one_of_the_teams_jobs_runs_from_it(tmp_path: Path) -> None:
    launcher = launcher_at(tmp_path, compile_cache_bytes=500 << 10)
    job = JobSpec(run_id=41, env={"SEED": "1", "RUN_ID": "caddie-run-41"}, hardware="cpu", timeout_s=60,
                  script_files={"train_gpt.py": b"import time; time.sleep(4)"}, team_id=1)  # fmt: skip
    handle = launcher.submit(launcher.acquire(job.run_id, "cpu"), job)
    folder = compile_cache.team_folder(launcher.settings.compile_cache_dir, 1)  # type: ignore[arg-type]
    for n in range(10):  # 1,000 KiB of old entries, meanwhile: twice the limit
        (folder / "triton" / f"k{n}").write_bytes(os.urandom(100 << 10))
    end = time.monotonic() + 30
    while not (Path(handle.data["workdir"]) / "child.json").exists():  # the wrapper holds the folder before its child starts
        assert time.monotonic() < end
        time.sleep(0.05)
    held = compile_cache.trim(folder, 500 << 10)  # what the team's next job's launch does
    assert held.busy and held.freed == 0 and len(list((folder / "triton").iterdir())) == 10
    assert "not trimmed while another of the team's jobs runs from it" in held.describe()
    assert compile_cache.trim(folder, 400 << 10).freed >= 680 << 10  # past twice its limit, the disk comes first
    for n in range(7):  # and the job fills it again: 1,000 KiB
        (folder / "triton" / f"k{n}").write_bytes(os.urandom(100 << 10))
    other = compile_cache.team_folder(launcher.settings.compile_cache_dir, 2)  # type: ignore[arg-type]
    (other / "triton" / "k").write_bytes(b"x" * 4096)
    assert compile_cache.trim(other, 0) == (0, 0, 4096, False)  # another team's folder is not held: trimmed
    while launcher.status(handle).state in (JobState.PENDING, JobState.RUNNING):
        assert time.monotonic() < end
        time.sleep(0.05)
    held = compile_cache.trim(folder, 500 << 10)  # the job has ended: the next launch trims
    assert not held.busy and held.freed >= 600 << 10 and held.files == 4


COMPILED = rb"""
import os, time, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
fn = torch.compile(model)
t0 = time.perf_counter()
out = fn(torch.randn(4, 64))
print(f"compiled_in:{time.perf_counter() - t0:.3f}", flush=True)
from torch._dynamo.utils import counters
print("hits:" + str(counters["inductor"]["fxgraph_cache_hit"]) + " misses:" + str(counters["inductor"]["fxgraph_cache_miss"]), flush=True)
print("entries:" + str(sum(len(f) for _, _, f in os.walk(os.environ["TORCHINDUCTOR_CACHE_DIR"]))), flush=True)
"""


@needs_bwrap
def test_a_teams_second_compile_reads_the_first_ones_graph(tmp_path: Path) -> None:
    """The real thing, on the CPU: torch.compile in two sealed jobs of one team; the first fills the
    team's cache, the second hits it (inductor's FX graph cache: 13.9 s, then 7.1 s here)."""
    pytest.importorskip("torch")
    launcher = launcher_at(tmp_path)
    times, entries, hits = [], [], []
    for run_id in (41, 42):
        job = JobSpec(run_id=run_id, env={"SEED": "1", "RUN_ID": f"caddie-run-{run_id}"}, hardware="cpu", timeout_s=300,
                      script_files={"train_gpt.py": COMPILED}, team_id=5)
        state, log, _ = finish(launcher, job, 300)
        assert state is JobState.SUCCEEDED, log[-3000:]
        times.append(float(log.split("compiled_in:")[1].split()[0]))
        entries.append(int(log.split("entries:")[1].split()[0]))
        hits.append(log.split("hits:")[1].split()[0] + "/" + log.split("misses:")[1].split()[0])
    assert entries[0] > 0 and entries[1] >= entries[0], entries  # the first job wrote the team's cache
    assert hits == ["0/1", "1/0"], (hits, times)  # the second found its graph there: inductor's own count, not a timing
