"""A running local job's memory and disk, measured and bounded (read by its wrapper, worker.launchers.local_wrapper).

Mechanisms, each chosen because it needs no root, no systemd and no cgroup delegation (so it
holds on Debian, in CI and in a container), and none of them breaks CUDA:

* disk: RLIMIT_FSIZE at the disk limit on the job (the kernel refuses any one file past it at
  once: EFBIG, or SIGXFSZ for a program that does not ignore it), and the wrapper's watcher sums
  the run folder's allocated bytes every second or so and stops the job past the limit;
* memory: the watcher sums its processes' memory (RSS, cheap; PSS from smaps_rollup only when
  RSS says it may be over, so shared pages count once) plus what its /tmp and /dev/shm hold
  (RAM-backed tmpfs, each also capped at the memory limit by bwrap's ``--size``), and stops the
  job past the limit. Not RLIMIT_AS: CUDA reserves far more address space than it uses, so such
  a limit near the job's real memory keeps a GPU job from starting (bench/job_limits_gpu.py). Not a cgroup's memory.max: it needs a delegated cgroup v2
  subtree, which neither ``caddie up`` nor CI has.

* a hang: no new output and (almost) no CPU time over CADDIE_IDLE_TIMEOUT_S, and no GPU of the machine
  busy. A trainer that works prints, or computes on the CPU (compiles, loads, launches kernels, spins
  while it waits on the GPU), or keeps a GPU busy; a deadlocked or sleeping one does none of these and
  is stopped within seconds, not at the silence watchdog (CADDIE_SILENCE_TIMEOUT_S), which stays for
  hangs that spin (a collective waiting for a dead rank).

The watcher polls, so a job can overshoot by what it allocates between two looks (a fraction of
a second); the kernel's OOM killer stays the last line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

MEMORY_SETTING = "CADDIE_JOB_MEMORY_BYTES"
DISK_SETTING = "CADDIE_JOB_DISK_BYTES"
IDLE_SETTING = "CADDIE_IDLE_TIMEOUT_S"
IDLE_CPU_SHARE = 0.01  # of one core over the idle window: less than this is no work (a sleeping process uses ~0)
DEFAULT_MEMORY_FRACTION = 0.8  # of the machine's memory (or its cgroup's limit), when CADDIE_JOB_MEMORY_BYTES is 0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cgroup_memory_file(proc_cgroup: str, root: str = "/sys/fs/cgroup") -> str:
    """The file holding the memory limit of the cgroup that /proc/self/cgroup's text names (v2 first, else v1's
    memory controller), '' where it names none."""
    v1 = ""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and os.path.exists(f"{root}/cgroup.controllers"):
            return f"{root}{path.rstrip('/')}/memory.max"
        if "memory" in controllers.split(","):
            v1 = f"{root}/memory{path.rstrip('/')}/memory.limit_in_bytes"
    return v1


def machine_memory_bytes() -> int:
    """The memory this worker may use: this machine's RAM (MemTotal), or its cgroup's limit where that is less
    (a container's, a systemd unit's MemoryMax)."""
    total = os.sysconf("SC_PHYS_PAGES") * _PAGE
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            path = cgroup_memory_file(fh.read())
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total  # "max": no limit


def memory_limit(setting: int) -> int:
    """The job's memory limit in bytes: the setting, or (0) a fraction of the memory this worker may use."""
    return setting if setting > 0 else int(machine_memory_bytes() * DEFAULT_MEMORY_FRACTION)


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def limit_reason(kind: str, used: int, limit: int, detail: str = "") -> str:
    """What the run says when its job was stopped at a limit (pure)."""
    where = "over" if used > limit else "at"  # at: a tmpfs filled to its size, which is the limit
    if kind == "memory":
        detail = f": {detail}" if detail else ""
        return f"memory limit: the job used {used:,} bytes ({gib(used)}){detail}, {where} {MEMORY_SETTING}={limit} ({gib(limit)}); stopped"
    return f"disk limit: the run folder held {used:,} bytes ({gib(used)}), {where} {DISK_SETTING}={limit} ({gib(limit)}); stopped"


def idle_reason(silent_s: float, cpu_s: float, window_s: float, limit_s: float) -> str:
    """Why a job is presumed hung ('' if it is not): no output for more than ``limit_s`` and less than
    IDLE_CPU_SHARE of a core used over the last ``window_s`` (at least ``limit_s``) seconds (pure)."""
    if limit_s <= 0 or silent_s <= limit_s or window_s < limit_s or cpu_s >= IDLE_CPU_SHARE * window_s:
        return ""
    return (f"hung: no output for {silent_s:.0f} s and {cpu_s:.2f} s of CPU time in the last {window_s:.0f} s, no GPU busy "
            f"({IDLE_SETTING}={limit_s:g}); stopped")


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after "(comm)" (a name may hold spaces and parentheses): field 3 (state) first."""
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def processes_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of the processes and of their children they have reaped (utime, stime, cutime, cstime)."""
    total = 0
    for pid in pids:
        try:
            total += sum(int(f) for f in _stat_fields(pid)[11:15])  # fields 14-17
        except (OSError, IndexError, ValueError):
            continue  # gone
    return total / _TICKS


def gpus_busy() -> bool:
    """Whether any GPU of the machine reports work (nvidia-smi's utilisation); False where there is none."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: do not call it idle
    return any(v.strip().isdigit() and int(v) > 0 for v in out.splitlines())


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it, from each thread's /proc children list (no scan of /proc), or
    where the kernel keeps no such list (CONFIG_PROC_CHILDREN off, gVisor) from every process's parent."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children") and os.path.exists(f"/proc/{pid}"):
        return descendants_by_parent(pid)
    out, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue  # gone
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children", encoding="ascii") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except OSError:
                continue
    return out


def descendants_by_parent(pid: int) -> list[int]:
    """``pid`` and every process under it, from the parent each process of /proc names (a scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])  # field 4
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size (shared pages split among their users); RSS where smaps_rollup cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return _rss(pid)


def processes_memory(pids: Sequence[int], limit: int) -> int:
    """The processes' memory: their RSS sum, or where that is over ``limit``, their PSS sum (exact for shared pages)."""
    rss = sum(_rss(p) for p in pids)
    return rss if rss <= limit else sum(_pss(p) for p in pids)


def open_tmpfs(pids: Iterable[int], mounts: Sequence[str]) -> list[int]:
    """Descriptors of the job's own tmpfs ``mounts`` (its /tmp, /dev/shm), opened through a process of its
    mount namespace (/proc/<pid>/root); [] while no process of the job is in a namespace of its own.
    An open descriptor keeps a tmpfs readable after the job's namespace is gone: what it held at the end."""
    if not mounts:
        return []
    try:
        mine = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return []
    for pid in pids:
        fds: list[int] = []
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") == mine:
                continue  # the wrapper's or bwrap's own view: the host's /tmp is not the job's
            for m in mounts:
                fds.append(os.open(f"/proc/{pid}/root{m}", os.O_RDONLY | os.O_DIRECTORY))
            return fds
        except OSError:
            for fd in fds:
                os.close(fd)
    return []


def tmpfs_usage(fds: Iterable[int]) -> tuple[int, bool]:
    """Bytes the tmpfs mounts behind ``fds`` hold, and whether any of them is full."""
    used, full = 0, False
    for fd in fds:
        st = os.fstatvfs(fd)
        used += (st.f_blocks - st.f_bfree) * st.f_frsize
        full = full or (st.f_blocks > 0 and st.f_bfree == 0)
    return used, full


def folder_bytes(folder: Path) -> int:
    """Disk a folder's files take (allocated blocks; links not followed, hard links once)."""
    total, seen = 0, set()
    stack = [str(folder)]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total
