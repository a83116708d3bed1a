"""Tiny supervisor between the worker and the trainer process (one per job).

    python -m worker.launchers.local_wrapper --workdir DIR [--timeout S] [--grace S] -- ARGV...

It starts ARGV in its own process group with stdout and stderr appended to
DIR/stdout.log, records the child in DIR/child.json, waits, and writes
DIR/exit_code.json atomically. The worker that launched it may die meanwhile;
the exit code stays recoverable from the file. SIGTERM/SIGINT/SIGHUP to the
wrapper are forwarded to the child's process group, and the group is killed
if it is still there `grace` seconds later. `timeout` (0 = none) is a backstop
for when no worker is left to enforce the run's hard timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def supervise(workdir: Path, argv: list[str], timeout_s: float, grace_s: float) -> dict[str, Any]:
    """Run argv to completion under the rules above; return what was written to exit_code.json."""
    log = open(workdir / STDOUT_LOG, "ab", buffering=0)
    stop: dict[str, float] = {}  # "at": when a stop was first asked for

    def on_signal(signum: int, _frame: Any) -> None:
        stop.setdefault("at", time.monotonic())
        stop.setdefault("signal", float(signum))

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    started = time.monotonic()
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:  # not found, not executable: a failed run, not a crashed wrapper
        log.write(f"caddie: cannot start trainer {argv[0]!r}: {exc}\n".encode())
        result = {"exit_code": 127, "timed_out": False, "stopped_by_signal": None, "finished_at": time.time()}
        write_json_atomic(workdir / EXIT_FILE, result)
        return result

    write_json_atomic(workdir / CHILD_FILE, {"pid": child.pid, "pgid": child.pid, "create_time": _process_create_time(child.pid)})

    timed_out = False
    forwarded = killed = False
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
        if "at" in stop and not forwarded:
            forwarded = True
            _signal_group(child.pid, signal.SIGTERM)
        if "at" in stop and not killed and now - stop["at"] > grace_s:
            killed = True
            _signal_group(child.pid, signal.SIGKILL)

    # Stragglers (dataloader workers, torchrun ranks) must not hold GPUs after the job.
    _signal_group(child.pid, signal.SIGKILL)
    sig = stop.get("signal")
    result = {
        "exit_code": rc,
        "timed_out": timed_out,
        "stopped_by_signal": int(sig) if sig is not None else None,
        "finished_at": time.time(),
    }
    write_json_atomic(workdir / EXIT_FILE, result)
    log.close()
    return result


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.launchers.local_wrapper")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=0.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no trainer command after --")
    supervise(ns.workdir, argv, ns.timeout, ns.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
