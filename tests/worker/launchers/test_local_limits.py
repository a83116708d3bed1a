"""A running job's memory and disk, bounded on the real local launcher (issue 17): real jobs in the real
sandbox (bubblewrap) that allocate, fill /dev/shm and write past their limits; each run ends FAILED with
the limit and its setting named, and nothing of the job is left running."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from service.core.models import Run
from service.core.settings import Settings
from tests.worker.run.test_executor import go, maker, new_run  # noqa: F401 (fixtures)
from worker.launchers.base import JobSpec, JobState, JobStatus, LaunchHandle
from worker.launchers.limits import cgroup_memory_file, descendants, descendants_by_parent, folder_bytes, limit_reason, machine_memory_bytes, memory_limit
from worker.launchers.local import LocalLauncher
from worker.launchers.sandbox import sealed_argv

MiB = 1 << 20
needs_bwrap = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap is not installed")

# Each mode goes at most to a small multiple of the test's limits, so a broken limit never takes the shared machine.
HOG = r"""
import json, os, sys, time
mode = sys.argv[1]
print("step:1/2 train_loss:6.5 train_time:10ms step_avg:10.00ms", flush=True)
st = os.statvfs("/dev/shm")
print("shm_size:" + str(st.f_blocks * st.f_frsize), flush=True)
if mode == "memory":
    held = []
    for _ in range(48):  # 384 MiB at most, 8 MiB each 20 ms
        held.append(bytearray(8 << 20))
        time.sleep(0.02)
elif mode == "shm":
    with open("/dev/shm/segment", "wb") as fh:
        for _ in range(48):
            fh.write(b"\1" * (8 << 20))
            fh.flush()
            time.sleep(0.02)
elif mode == "files":
    for n in range(48):  # many files, none near the limit alone
        with open(f"shard-{n}.bin", "wb") as fh:
            fh.write(b"\1" * (8 << 20))
        time.sleep(0.02)
elif mode == "one_file":
    with open("checkpoint.bin", "wb") as fh:
        for _ in range(48):
            fh.write(b"\1" * (8 << 20))
elif mode == "fork":  # the memory spread over processes it started
    import multiprocessing as mp
    def hold():
        x = [bytearray(8 << 20) for _ in range(16)]
        time.sleep(30)
    procs = [mp.get_context("fork").Process(target=hold) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
print("not stopped", flush=True)
with open("result.json", "w") as fh:
    json.dump({"status": "succeeded"}, fh)
"""


def launcher(tmp_path: Path, mode: str, **overrides: object) -> LocalLauncher:
    script = tmp_path / "hog.py"
    script.write_text(HOG)
    s = Settings(_env_file=None, home=tmp_path / "home", trainer_command=[sys.executable, str(script), mode], cancel_grace_s=1.0, gpu_count=0,
                 job_memory_bytes=128 * MiB, job_disk_bytes=192 * MiB, **overrides)  # fmt: skip
    return LocalLauncher(s)


def run(lau: LocalLauncher, run_id: int) -> tuple[JobStatus, LaunchHandle, str]:
    handle = lau.submit(lau.acquire(run_id, "local"), JobSpec(run_id=run_id, env={}, hardware="local", timeout_s=120))
    end = time.monotonic() + 60
    while time.monotonic() < end:
        st = lau.status(handle)
        if st.terminal:
            return st, handle, (Path(handle.data["workdir"]) / "stdout.log").read_text()
        time.sleep(0.05)
    raise AssertionError("the job did not end")


def no_process_of(handle: LaunchHandle) -> bool:
    child = json.loads((Path(handle.data["workdir"]) / "child.json").read_text())
    return not psutil.pid_exists(child["pid"]) or psutil.Process(child["pid"]).status() == psutil.STATUS_ZOMBIE


@needs_bwrap
def test_a_job_past_its_memory_limit_is_stopped_and_says_which_setting(tmp_path: Path) -> None:
    st, handle, log = run(launcher(tmp_path, "memory"), 1)
    assert st.state is JobState.FAILED, st
    assert st.reason.startswith("memory limit: the job used ") and "over CADDIE_JOB_MEMORY_BYTES=134217728 (0.12 GiB); stopped" in st.reason
    used = int(st.reason.split("used ")[1].split(" bytes")[0].replace(",", ""))
    assert 128 * MiB < used < 320 * MiB  # stopped within a few looks of the limit (a loaded machine delays them), never let reach 384 MiB
    assert "not stopped" not in log and log.rstrip().endswith(st.reason)  # the log says it too, last
    assert no_process_of(handle)


@needs_bwrap
def test_its_dev_shm_is_sized_at_the_limit_and_counts_as_its_memory(tmp_path: Path) -> None:
    st, _, log = run(launcher(tmp_path, "shm"), 2)
    assert f"shm_size:{128 * MiB}" in log  # bwrap --size: the kernel's own bound on the tmpfs
    assert st.state is JobState.FAILED and st.reason.startswith("memory limit: "), st
    assert "/dev/shm" in st.reason and "CADDIE_JOB_MEMORY_BYTES=134217728" in st.reason and "not stopped" not in log


@needs_bwrap
def test_memory_spread_over_its_processes_is_summed(tmp_path: Path) -> None:
    st, handle, log = run(launcher(tmp_path, "fork"), 3)  # 3 x 128 MiB held by children, none over alone
    assert st.state is JobState.FAILED and st.reason.startswith("memory limit: "), st
    assert "not stopped" not in log and no_process_of(handle)


@needs_bwrap
def test_a_run_folder_past_its_disk_limit_is_stopped_and_says_which_setting(tmp_path: Path) -> None:
    st, handle, log = run(launcher(tmp_path, "files"), 4)
    assert st.state is JobState.FAILED, st
    assert st.reason.startswith("disk limit: the run folder held ") and "over CADDIE_JOB_DISK_BYTES=201326592 (0.19 GiB); stopped" in st.reason
    assert "not stopped" not in log
    assert folder_bytes(Path(handle.data["workdir"])) < 400 * MiB  # stopped, not left to write its 384 MiB and more


@needs_bwrap
def test_no_file_grows_past_the_disk_limit(tmp_path: Path) -> None:
    st, handle, log = run(launcher(tmp_path, "one_file"), 5)
    assert (Path(handle.data["workdir"]) / "checkpoint.bin").stat().st_size == 192 * MiB  # RLIMIT_FSIZE: the kernel refused the rest
    assert "File too large" in log
    assert st.state is JobState.FAILED and st.reason.startswith("disk limit: ") and "CADDIE_JOB_DISK_BYTES=201326592" in st.reason, st


def test_unsealed_jobs_are_bounded_too(tmp_path: Path) -> None:
    st, handle, log = run(launcher(tmp_path, "memory", sandbox="none"), 6)
    assert st.state is JobState.FAILED and st.reason.startswith("memory limit: "), st
    assert "not stopped" not in log and no_process_of(handle)


def test_a_job_within_its_limits_is_left_alone(tmp_path: Path) -> None:
    st, _, log = run(launcher(tmp_path, "ok", sandbox="none"), 7)
    assert st.state is JobState.SUCCEEDED and "not stopped" in log


@needs_bwrap
def test_the_run_ends_failed_with_the_limit_named_and_is_not_retried(maker, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "hog.py"
    script.write_text(HOG)
    s = Settings(home=tmp_path, trainer_command=[sys.executable, str(script), "memory"], gpu_count=0, heartbeat_s=0.5, poll_interval_s=0.05,
                 cancel_grace_s=1.0, max_attempts=2, job_memory_bytes=128 * MiB)  # fmt: skip
    run_id = new_run(maker)
    assert go(maker, s, run_id).startswith(f"run {run_id} FAILED: memory limit: ")
    with maker() as session:
        row = session.get(Run, run_id)
        assert row.status_reason.startswith("memory limit: the job used ") and "CADDIE_JOB_MEMORY_BYTES=134217728" in row.status_reason
        assert (row.attempts or 0) <= 1


def test_the_limits_default_and_read(tmp_path: Path) -> None:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < machine_memory_bytes() <= total
    assert memory_limit(0) == int(machine_memory_bytes() * 0.8) and memory_limit(5) == 5
    v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n"
    assert cgroup_memory_file(v1, str(tmp_path)) == f"{tmp_path}/memory/process_api/abc/memory.limit_in_bytes"
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")  # a v2 hierarchy
    assert cgroup_memory_file("0::/system.slice/caddie-worker.service\n", str(tmp_path)) == f"{tmp_path}/system.slice/caddie-worker.service/memory.max"
    assert cgroup_memory_file("", str(tmp_path)) == ""
    assert Settings(_env_file=None).job_disk_bytes == 20 << 30
    assert limit_reason("disk", 3 << 30, 2 << 30) == (
        "disk limit: the run folder held 3,221,225,472 bytes (3.00 GiB), over CADDIE_JOB_DISK_BYTES=2147483648 (2.00 GiB); stopped")
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a", tmp_path / "hard")  # counted once
    (tmp_path / "out").symlink_to("/usr")  # not followed
    assert 100_000 <= folder_bytes(tmp_path) < 200_000


def test_a_jobs_processes_are_found_with_or_without_the_kernels_children_lists() -> None:
    import subprocess

    tree = "import subprocess, sys, time; k = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)']) for _ in range(3)]; time.sleep(5)"
    parent = subprocess.Popen([sys.executable, "-c", tree])
    try:
        end = time.monotonic() + 10
        while len(descendants_by_parent(parent.pid)) < 4:
            assert time.monotonic() < end
            time.sleep(0.05)
        assert sorted(descendants(parent.pid)) == sorted(descendants_by_parent(parent.pid))  # the lists (here) and the scan (gVisor) agree
    finally:
        for p in descendants(parent.pid):
            os.kill(p, 9)
        parent.wait()


@needs_bwrap
def test_sealed_argv_sizes_tmp_and_dev_shm() -> None:
    argv = sealed_argv(["true"], workdir=Path("/w"), ro_paths=[], gpus=[], tmpfs_bytes=1234)
    pairs = list(zip(argv, argv[1:], argv[2:], argv[3:], strict=False))
    assert ("--size", "1234", "--tmpfs", "/dev/shm") in pairs and ("--size", "1234", "--tmpfs", "/tmp") in pairs
    assert "--size" not in sealed_argv(["true"], workdir=Path("/w"), ro_paths=[], gpus=[])
