"""The sandbox every local job runs in: bubblewrap (bwrap).

Why bubblewrap: it works unprivileged on Debian and in CI (user namespaces),
needs no daemon, and gives in one call everything a job must not have: its own
user namespace (uid 65534, no capabilities), pid namespace (no other process
to see in /proc or to signal; every process it started dies when its command ends), network
namespace with only loopback (torchrun's rendezvous works, the database and
the API do not), and a filesystem built from binds: the system and Python
read-only, the data read-only, the trainer code read-only, the run folder
writable, a fresh /proc, /dev and /tmp. Nothing else (CADDIE_HOME, the session
key, other runs' folders, the repository) exists inside.

Without bwrap a job is refused with a clear message, unless the operator set
CADDIE_SANDBOX=none (unsafe: the job runs as the worker's user, unsealed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from worker.launchers.base import LaunchFailed

SANDBOX_UID = 65534  # nobody: the job's identity inside its user namespace
DEV = Path("/dev")
# System folders a Python process needs, bound read-only where they exist.
SYSTEM_RO = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf",
             "/etc/ld.so.conf.d", "/etc/ssl", "/etc/ca-certificates", "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/host.conf")  # fmt: skip


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


TMPFS = ("/dev/shm", "/tmp")  # the job's own RAM-backed folders: sized, and counted as its memory (worker.launchers.limits)


@cache
def sizes_tmpfs(bwrap: str) -> bool:
    """Does this bwrap size a tmpfs (``--size``; Debian 12's 0.8.0 does)? An older one leaves it unsized;
    the wrapper's watcher still counts what it holds."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out.stdout + out.stderr


def python_roots() -> list[Path]:
    """The Python installation, its environment (venv) and the user's pip installs, read-only inside."""
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    user_base = Path(site.getuserbase())
    if site.ENABLE_USER_SITE and Path(site.getusersitepackages()).is_dir():  # a node's `pip install --user`
        roots.add(user_base.resolve())
    return sorted(roots)


def gpu_devices(dev: Path = DEV) -> list[Path]:
    """The NVIDIA device nodes under ``dev`` (nvidia0.., nvidiactl, nvidia-uvm, nvidia-caps, ...):
    the only host devices a job gets; none on a machine without NVIDIA GPUs."""
    return sorted(dev.glob("nvidia*"))


def sealed_argv(argv: list[str], *, workdir: Path, ro_paths: Iterable[Path], bwrap: str | None = None, die_with_parent: bool = False,
                gpus: Sequence[Path] | None = None, tmpfs_bytes: int = 0, rw_paths: Iterable[Path] = ()) -> list[str]:  # fmt: skip
    """argv wrapped in bwrap: sees only `workdir` and `rw_paths` (writable: the team's compile cache) and
    `ro_paths` + the system + Python (read-only),
    and of the host's /dev only `gpus` (default: ``gpu_devices()``), each at /dev/<its name>;
    its /tmp and /dev/shm each hold at most `tmpfs_bytes` (0: unsized) where bwrap can size them.

    LaunchFailed when bwrap is missing (the caller's unsafe opt-out decides before calling)."""
    gpus = gpu_devices() if gpus is None else gpus
    bwrap = bwrap or bwrap_path()
    if not bwrap:
        raise LaunchFailed("no sandbox: bubblewrap (bwrap) is not installed on this worker; install it "
                           "(apt-get install bubblewrap) or, unsafely, set CADDIE_SANDBOX=none")
    # No --die-with-parent and no --new-session: the sandbox stays in the wrapper's process group, so
    # the wrapper's and cancel's signals to that group reach the job, and the job outlives a dead
    # wrapper (a restarted worker re-attaches to it). The pid namespace still ends every process of
    # the job when its command ends; no terminal is ever given to it (stdin /dev/null, output a file).
    out = [bwrap, "--unshare-all", "--cap-drop", "ALL",
           "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "localhost",  # torchrun resolves its own hostname: loopback
           "--proc", "/proc", "--dev", "/dev"]  # fmt: skip
    for mount in TMPFS:
        out += ["--size", str(tmpfs_bytes), "--tmpfs", mount] if tmpfs_bytes > 0 and sizes_tmpfs(bwrap) else ["--tmpfs", mount]
    out += ["--setenv", "HOME", str(workdir), "--setenv", "TMPDIR", "/tmp"]
    for p in SYSTEM_RO:
        if Path(p).is_symlink():
            out += ["--symlink", str(Path(p).readlink()), p]
        elif Path(p).exists():
            out += ["--ro-bind", p, p]
    for ro in [*python_roots(), *ro_paths]:
        out += ["--ro-bind-try", str(ro), str(ro)]  # a missing data root stays missing inside
    for dev in gpus:  # GPUs, when there are any; the rest of /dev is bwrap's own (null, zero, random, tty, ...)
        out += ["--dev-bind", str(dev), str(DEV / dev.name)]
    if gpus:
        out += ["--ro-bind-try", "/sys", "/sys"]  # CUDA and NCCL read the PCI topology there
    if die_with_parent:
        out.insert(1, "--die-with-parent")
    for rw in rw_paths:
        out += ["--bind", str(rw), str(rw)]
    out += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--"]
    return out + argv


def main(args: list[str] | None = None) -> int:
    """``python -m worker.launchers.sandbox --workdir DIR [--ro PATH]... [--rw PATH]... -- ARGV``: ARGV sealed (a SkyPilot node's run script)."""
    parser = argparse.ArgumentParser(prog="python -m worker.launchers.sandbox")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--ro", action="append", default=[], type=Path, help="also visible, read-only")
    parser.add_argument("--rw", action="append", default=[], type=Path, help="also visible, writable (the team's compile cache)")
    parser.add_argument("--die-with-parent", action="store_true")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no command after --")
    try:
        sealed = sealed_argv(argv, workdir=ns.workdir.resolve(), ro_paths=[p.resolve() for p in ns.ro], die_with_parent=ns.die_with_parent,
                             rw_paths=[p.resolve() for p in ns.rw])
    except LaunchFailed as exc:
        print(f"caddie: {exc}", file=sys.stderr, flush=True)
        return 126
    os.execv(sealed[0], sealed)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
