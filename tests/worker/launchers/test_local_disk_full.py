"""A run folder that refuses writes (issue 21 item 4), on the real local launcher: the job's
reason names the refused write, the run folder and its disk, not only the trainer's errno.

A full disk cannot be mounted here without root, so the job's writes are refused by a
file-size limit (RLIMIT_FSIZE, set by the stand-in on itself: its writes fail with EFBIG),
and a full disk by the line a trainer prints when its write got ENOSPC."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from service.core.settings import Settings
from worker.launchers.base import JobSpec, JobState, JobStatus, LaunchHandle
from worker.launchers.local import LocalLauncher, write_refused

STAND_IN = r"""
import os, resource, sys
mode = sys.argv[1]
print("step:1/2 train_loss:6.5 train_time:10ms step_avg:10.00ms", flush=True)
if mode == "fsize":
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: the write raises EFBIG
    with open("model.int6.ptz", "wb") as fh:
        fh.write(b"x" * 65536)
print("Traceback (most recent call last):", flush=True)
print("OSError: [Errno 28] No space left on device", flush=True)
print("   (cleanup noise)", flush=True)
sys.exit(1)
"""


def launcher(tmp_path: Path, mode: str) -> LocalLauncher:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return LocalLauncher(Settings(_env_file=None, home=tmp_path / "home", trainer_command=[sys.executable, str(script), mode],
                                  cancel_grace_s=2.0, gpu_count=0, sandbox="none"))  # fmt: skip


def ended(lau: LocalLauncher, handle: LaunchHandle) -> JobStatus:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        st = lau.status(handle)
        if st.terminal:
            return st
        time.sleep(0.05)
    raise AssertionError("the job did not end")


def test_a_write_refused_by_the_file_size_limit_names_the_run_folder(tmp_path: Path) -> None:
    lau = launcher(tmp_path, "fsize")
    handle = lau.submit(lau.acquire(5, "local"), JobSpec(run_id=5, env={}, hardware="local", timeout_s=60))
    st = ended(lau, handle)
    assert st.state is JobState.FAILED and st.exit_code == 1
    assert st.reason.startswith("file-size limit: a write in the run folder ")
    assert handle.data["workdir"] in st.reason and "File too large" in st.reason


def test_a_full_disk_seen_in_the_log_names_the_run_folder_and_is_not_retried_there(tmp_path: Path) -> None:
    lau = launcher(tmp_path, "enospc")
    handle = lau.submit(lau.acquire(6, "local"), JobSpec(run_id=6, env={}, hardware="local", timeout_s=60))
    st = ended(lau, handle)
    assert st.state is JobState.FAILED  # FAILED, not LOST: the executor does not requeue it
    assert st.reason.startswith("disk full: a write in the run folder ") and handle.data["workdir"] in st.reason
    assert "No space left on device" in st.reason and "not retried on this disk" in st.reason


def test_write_refused_reads_only_refused_writes() -> None:
    folder, disk = Path("/runs/7/attempt-1"), Path("/")
    assert write_refused("step:1\nRuntimeError: boom\n", folder, disk) == ""
    quota = write_refused("x\nOSError: [Errno 122] Disk quota exceeded\nnoise\n", folder, disk)
    assert quota.startswith("disk full: a write in the run folder /runs/7/attempt-1 (disk /)") and "[Errno 122]" in quota
