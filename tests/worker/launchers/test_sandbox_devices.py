"""A GPU job's devices in the sandbox (issue 17 item 1): bwrap binds the NVIDIA device nodes that
exist, each at /dev/<its name>, and nothing else of the host's /dev; the rest of the job's /dev is
bwrap's own fresh one. CPU-runnable: the device folder is a stand-in with files named as a GPU
node's are, and the sandbox is the real bwrap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.launchers.sandbox import gpu_devices, sealed_argv

GPU_NODES = ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps"]
OTHER_NODES = ["null", "kvm", "fuse", "mem", "sda", "loop0", "dri", "tty0", "nvme0n1"]
# What bwrap's --dev makes (plus our /dev/shm tmpfs): no host device beyond the harmless standard ones.
BWRAP_DEV = {"core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
LIST_DEV = "import json, os; print(json.dumps({n: open('/dev/' + n).read() if os.path.isfile('/dev/' + n) else None for n in os.listdir('/dev')}))"


@pytest.fixture()
def dev(tmp_path: Path) -> Path:
    """A host's /dev as files: each GPU node holds its own name, so a read inside tells which it is."""
    root = tmp_path / "dev"
    root.mkdir()
    for name in GPU_NODES + OTHER_NODES:
        if name in ("nvidia-caps", "dri"):
            (root / name).mkdir()
            (root / name / ("nvidia-cap1" if name == "nvidia-caps" else "card0")).write_text(name)
        else:
            (root / name).write_text(name)
    return root


def _dev_args(argv: list[str]) -> list[tuple[str, ...]]:
    """Every option of the argument list that names a path under /dev, with its arguments."""
    found = []
    for i, arg in enumerate(argv[: argv.index("--")]):
        if arg == "--dev-bind":
            found.append(tuple(argv[i : i + 3]))
        elif arg.startswith("/dev") and argv[i - 1] != "--dev-bind" and argv[i - 2] != "--dev-bind":
            found.append((argv[i - 1], arg))
    return found


def test_the_gpu_nodes_are_the_nvidia_entries_of_the_device_folder(dev: Path, tmp_path: Path) -> None:
    assert [p.name for p in gpu_devices(dev)] == sorted(GPU_NODES)
    (tmp_path / "cpu-only").mkdir()
    assert gpu_devices(tmp_path / "cpu-only") == []


def test_the_argument_list_binds_each_gpu_node_and_nothing_else_of_dev(dev: Path, tmp_path: Path) -> None:
    gpu = sealed_argv(["true"], workdir=tmp_path, ro_paths=[], bwrap="bwrap", gpus=gpu_devices(dev))
    expected = [("--dev-bind", str(dev / n), f"/dev/{n}") for n in sorted(GPU_NODES)]
    assert _dev_args(gpu) == [("--dev", "/dev"), ("--tmpfs", "/dev/shm"), *expected]
    assert ["--ro-bind-try", "/sys", "/sys"] == gpu[gpu.index("/sys") - 1 : gpu.index("/sys") + 2]  # CUDA/NCCL read the PCI topology
    cpu = sealed_argv(["true"], workdir=tmp_path, ro_paths=[], bwrap="bwrap", gpus=[])
    assert _dev_args(cpu) == [("--dev", "/dev"), ("--tmpfs", "/dev/shm")] and "/sys" not in cpu
    # Left out, the nodes are this machine's own.
    host = sealed_argv(["true"], workdir=tmp_path, ro_paths=[], bwrap="bwrap")
    assert [a for a in _dev_args(host) if a[0] == "--dev-bind"] == [("--dev-bind", str(p), f"/dev/{p.name}") for p in gpu_devices()]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)")
def test_a_sealed_gpu_job_sees_its_gpu_nodes_and_no_other_host_device(dev: Path, tmp_path: Path) -> None:
    def inside(gpus: list[Path]) -> dict[str, str | None]:
        argv = sealed_argv([sys.executable, "-c", LIST_DEV], workdir=tmp_path, ro_paths=[], gpus=gpus)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    cpu = inside([])
    assert set(cpu) <= BWRAP_DEV and not {"kvm", "fuse", "mem", "sda", "loop0", "dri", "nvme0n1"} & set(cpu)
    gpu = inside(gpu_devices(dev))
    assert set(gpu) - set(cpu) == set(GPU_NODES)  # the GPU nodes and only they are added
    assert {n: gpu[n] for n in GPU_NODES if n != "nvidia-caps"} == {n: n for n in GPU_NODES if n != "nvidia-caps"}  # the host's nodes themselves
    assert gpu["null"] is None  # bwrap's own /dev/null (a device), not the folder's file
