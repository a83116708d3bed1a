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

import glob
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from worker.launchers.base import LaunchFailed

SANDBOX_UID = 65534  # nobody: the job's identity inside its user namespace
# System folders a Python process needs, bound read-only where they exist.
SYSTEM_RO = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf",
             "/etc/ld.so.conf.d", "/etc/ssl", "/etc/ca-certificates", "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group")  # fmt: skip


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def python_roots() -> list[Path]:
    """The Python installation and its environment (venv), read-only inside."""
    return sorted({Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})


def sealed_argv(argv: list[str], *, workdir: Path, ro_paths: Iterable[Path], bwrap: str | None = None) -> list[str]:
    """argv wrapped in bwrap: sees only `workdir` (writable) and `ro_paths` + the system + Python (read-only).

    LaunchFailed when bwrap is missing (the caller's unsafe opt-out decides before calling)."""
    bwrap = bwrap or bwrap_path()
    if not bwrap:
        raise LaunchFailed("no sandbox: bubblewrap (bwrap) is not installed on this worker; install it "
                           "(apt-get install bubblewrap) or, unsafely, set CADDIE_SANDBOX=none")
    # No --die-with-parent and no --new-session: the sandbox stays in the wrapper's process group, so
    # the wrapper's and cancel's signals to that group reach the job, and the job outlives a dead
    # wrapper (a restarted worker re-attaches to it). The pid namespace still ends every process of
    # the job when its command ends; no terminal is ever given to it (stdin /dev/null, output a file).
    out = [bwrap, "--unshare-all", "--cap-drop", "ALL",
           "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "caddie-job",
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
           "--setenv", "HOME", str(workdir), "--setenv", "TMPDIR", "/tmp"]  # fmt: skip
    for p in SYSTEM_RO:
        if Path(p).is_symlink():
            out += ["--symlink", str(Path(p).readlink()), p]
        elif Path(p).exists():
            out += ["--ro-bind", p, p]
    for p in [*python_roots(), *ro_paths]:
        out += ["--ro-bind-try", str(p), str(p)]  # a missing data root stays missing inside
    for dev in sorted(glob.glob("/dev/nvidia*")):  # GPUs, when there are any
        out += ["--dev-bind", dev, dev]
    out += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--"]
    return out + argv
