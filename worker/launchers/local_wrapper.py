"""Tiny supervisor between the worker and the trainer process (one per job; on a SkyPilot node too,
where infra/skypilot/task.yaml runs the job under it for its hang watch).

    python -m worker.launchers.local_wrapper --workdir DIR [--timeout S] [--grace S]
        [--memory-bytes N] [--disk-bytes N] [--tmpfs PATH]... [--idle-s S] [--shared DIR]... -- ARGV...

It starts ARGV in its own process group with stdout and stderr appended to
DIR/stdout.log, records the child in DIR/child.json, waits, and writes
DIR/exit_code.json atomically. The worker that launched it may die meanwhile;
the exit code stays recoverable from the file. SIGTERM/SIGINT/SIGHUP to the
wrapper are forwarded to the child's process group, and the group is killed
if it is still there `grace` seconds later. `timeout` (0 = none) is a backstop
for when no worker is left to enforce the run's hard timeout.

`memory-bytes` and `disk-bytes` (0 = none) bound the running job (worker.launchers.limits):
past either, the job's group is killed at once and exit_code.json says which limit
(`limit_exceeded`); the job's files may not grow past `disk-bytes` (RLIMIT_FSIZE).
`tmpfs` names the job's own RAM-backed mounts (its sandbox's /tmp, /dev/shm), counted as memory;
`shared` a folder outside the run folder the job writes to (its team's compile cache): its growth counts as disk,
and the wrapper holds it in use for the job's life (worker.launchers.compile_cache.in_use: no trim deletes from it meanwhile).
`idle-s` (0 = off) stops a job that printed nothing and used no CPU (and left every GPU idle) for that
long, as hung (worker.launchers.limits.idle_reason), with the same `limit_exceeded` record.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from worker.launchers import compile_cache
from worker.launchers.limits import (
    descendants,
    folder_bytes,
    gpus_busy,
    idle_reason,
    limit_reason,
    open_tmpfs,
    processes_cpu_seconds,
    processes_memory,
    tmpfs_usage,
)

STDOUT_LOG = "stdout.log"
CHILD_FILE = "child.json"
EXIT_FILE = "exit_code.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` so a reader sees either no file or the whole file, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _process_create_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing or the process already gone: the pid alone will do
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


MEMORY_EVERY_S = 0.25  # how often the job's memory is measured (RSS from statm: cheap)
DISK_EVERY_S = 1.0  # how often the run folder is summed, at least; a slow walk waits longer (DISK_WALK_SHARE)
DISK_WALK_SHARE = 0.05  # the folder walk may take at most this share of the wrapper's time


class Limits:
    """The job's memory and disk, measured now and then; ``over()`` says which limit it passed, if any."""

    def __init__(self, workdir: Path, memory_bytes: int, disk_bytes: int, tmpfs: list[str], shared: list[Path] | None = None) -> None:
        self.workdir, self.memory, self.disk, self.tmpfs = workdir, memory_bytes, disk_bytes, tmpfs
        self.next_memory = self.next_disk = 0.0
        self.fds: list[int] = []  # the job's tmpfs mounts, once its sandbox is up
        # Folders the job shares (its team's compile cache): what they grow by while it runs is its disk too.
        self.shared = {p: folder_bytes(p) for p in (shared or []) if disk_bytes > 0}

    def disk_used(self) -> int:
        return folder_bytes(self.workdir) + sum(max(0, folder_bytes(p) - before) for p, before in self.shared.items())

    def over(self, pid: int, now: float) -> str:
        if self.memory > 0 and now >= self.next_memory:
            self.next_memory = now + MEMORY_EVERY_S
            pids = descendants(pid)
            if not self.fds:
                self.fds = open_tmpfs(pids, self.tmpfs)
            shm, _ = tmpfs_usage(self.fds)
            procs = processes_memory(pids, self.memory - shm)
            if procs + shm > self.memory:
                return limit_reason("memory", procs + shm, self.memory, f"its processes {procs:,} bytes, its /tmp and /dev/shm {shm:,} bytes")
        if self.disk > 0 and now >= self.next_disk:
            t0 = time.monotonic()
            used = self.disk_used()
            self.next_disk = now + max(DISK_EVERY_S, (time.monotonic() - t0) / DISK_WALK_SHARE)
            if used > self.disk:
                return limit_reason("disk", used, self.disk)
        return ""

    def at_end(self) -> str:
        """Which limit the ended job had met, if any, though no look caught it running: a file at RLIMIT_FSIZE,
        a tmpfs filled to its size (the job then ended on ENOSPC). Closes the tmpfs descriptors (their memory goes)."""
        try:
            shm, full = tmpfs_usage(self.fds)
        finally:
            for fd in self.fds:
                os.close(fd)
            self.fds = []
        if self.memory > 0 and (full or shm > self.memory):
            return limit_reason("memory", shm, self.memory, f"its /tmp and /dev/shm held {shm:,} bytes{', one of them full' if full else ''}")
        if self.disk > 0 and (used := self.disk_used()) > self.disk:
            return limit_reason("disk", used, self.disk)
        return ""


IDLE_EVERY_S = 1.0  # how often the job's CPU time and output are sampled for the hang watch


class Idle:
    """The hang watch: when the job's log last grew, and its CPU time over the last ``limit_s`` seconds."""

    def __init__(self, log_fd: int, limit_s: float) -> None:
        self.log_fd, self.limit_s = log_fd, limit_s
        self.size, self.heard = -1, time.monotonic()
        self.samples: collections.deque[tuple[float, float]] = collections.deque()  # (when, CPU seconds so far)
        self.next = 0.0

    def hung(self, pid: int, now: float) -> str:
        if self.limit_s <= 0 or now < self.next:
            return ""
        self.next = now + IDLE_EVERY_S
        size = os.fstat(self.log_fd).st_size
        if size != self.size:
            self.size, self.heard = size, now
        cpu = processes_cpu_seconds(descendants(pid))
        if self.samples and cpu < self.samples[-1][1]:
            self.samples.clear()  # a child reaped outside the job took its CPU time along: start the window again
        self.samples.append((now, cpu))
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.limit_s:
            self.samples.popleft()  # keep one sample at least limit_s old: the window's start
        start, start_cpu = self.samples[0]
        why = idle_reason(now - self.heard, cpu - start_cpu, now - start, self.limit_s)
        if why and gpus_busy():
            self.next = now + self.limit_s  # a GPU works (this job's or another's): look again later
            return ""
        return why


def supervise(workdir: Path, argv: list[str], timeout_s: float, grace_s: float, memory_bytes: int = 0, disk_bytes: int = 0,
              tmpfs: list[str] | None = None, idle_s: float = 0.0, shared: list[Path] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run argv to completion under the rules above; return what was written to exit_code.json."""
    with contextlib.ExitStack() as held:
        for folder in shared or []:
            held.enter_context(compile_cache.in_use(folder))
        return _supervise(workdir, argv, timeout_s, grace_s, memory_bytes, disk_bytes, tmpfs, idle_s, shared)


def _supervise(workdir: Path, argv: list[str], timeout_s: float, grace_s: float, memory_bytes: int, disk_bytes: int,
               tmpfs: list[str] | None, idle_s: float, shared: list[Path] | None) -> dict[str, Any]:  # fmt: skip
    log = open(workdir / STDOUT_LOG, "ab", buffering=0)
    stop: dict[str, float] = {}  # "at": when a stop was first asked for

    def on_signal(signum: int, _frame: Any) -> None:
        stop.setdefault("at", time.monotonic())
        stop.setdefault("signal", float(signum))

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    def bound_files() -> None:  # in the child, before exec: no file of the job grows past the disk limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (disk_bytes, disk_bytes))

    limits = Limits(workdir, memory_bytes, disk_bytes, tmpfs or [], shared)
    idle = Idle(log.fileno(), idle_s)
    started = time.monotonic()
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=bound_files if disk_bytes > 0 else None)  # fmt: skip
    except OSError as exc:  # not found, not executable: a failed run, not a crashed wrapper
        log.write(f"caddie: cannot start trainer {argv[0]!r}: {exc}\n".encode())
        result: dict[str, Any] = {"exit_code": 127, "timed_out": False, "stopped_by_signal": None, "finished_at": time.time()}
        write_json_atomic(workdir / EXIT_FILE, result)
        return result

    write_json_atomic(workdir / CHILD_FILE, {"pid": child.pid, "pgid": child.pid, "create_time": _process_create_time(child.pid)})

    timed_out = False
    forwarded = killed = False
    exceeded = ""
    while True:
        try:
            rc = child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if timeout_s > 0 and not timed_out and now - started > timeout_s:
            timed_out = True
            stop.setdefault("at", now)
            log.write(f"\ncaddie: hard timeout after {timeout_s:.0f} s, stopping the trainer\n".encode())
        if not exceeded and (exceeded := limits.over(child.pid, now) or idle.hung(child.pid, now)):
            # Over a limit: no grace, the machine is what the limit protects.
            _signal_group(child.pid, signal.SIGKILL)
            log.write(f"\ncaddie: {exceeded}\n".encode())
        if "at" in stop and not forwarded:
            forwarded = True
            _signal_group(child.pid, signal.SIGTERM)
        if "at" in stop and not killed and now - stop["at"] > grace_s:
            killed = True
            _signal_group(child.pid, signal.SIGKILL)

    # Stragglers (dataloader workers, torchrun ranks) must not hold GPUs after the job.
    _signal_group(child.pid, signal.SIGKILL)
    late = limits.at_end()  # always: it lets the job's tmpfs go
    if late and not exceeded:  # met, then the job ended before a look caught it (EFBIG, ENOSPC in its /tmp)
        exceeded = late
        log.write(f"\ncaddie: {exceeded}\n".encode())
    sig = stop.get("signal")
    result = {
        "exit_code": rc,
        "timed_out": timed_out,
        "stopped_by_signal": int(sig) if sig is not None else None,
        "finished_at": time.time(),
        **({"limit_exceeded": exceeded} if exceeded else {}),
    }
    write_json_atomic(workdir / EXIT_FILE, result)
    log.close()
    return result


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.launchers.local_wrapper")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=0.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--memory-bytes", type=int, default=0)
    parser.add_argument("--disk-bytes", type=int, default=0)
    parser.add_argument("--tmpfs", action="append", default=[])
    parser.add_argument("--idle-s", type=float, default=0.0)
    parser.add_argument("--shared", action="append", default=[], type=Path, help="a folder the job shares (its team's compile cache): its growth counts as the job's disk")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no trainer command after --")
    supervise(ns.workdir, argv, ns.timeout, ns.grace, ns.memory_bytes, ns.disk_bytes, ns.tmpfs, ns.idle_s, ns.shared)
    return 0


if __name__ == "__main__":
    sys.exit(main())
