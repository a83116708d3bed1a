"""caddie's watch on a script run, loaded by Python at start through PYTHONPATH (the
script is not changed): every file opened and every network connection, one JSON line
each, appended to audit.jsonl in the folder it starts in (a script run's folder: only
script runs get this folder on PYTHONPATH, and no caddie variable reaches the script). An audit hook (sys.addaudithook, PEP 578) sees the
opens of every library (numpy's memmap and torch's loads go through open too) in every
process of the run (torchrun's ranks inherit the env); /proc polling would miss a shard
opened and closed between two looks. A script that loads another sitecustomize first is
noted by the absence of the file, which the rules report as not watched.

Each line carries ``log``: how many bytes the run's stdout.log held when it happened
(fstat of fd 1, which the launcher points at stdout.log, shared by every rank, unbuffered).
That places an event between two lines of the log without trusting any clock: the reader
(service.runs.touches) splits the run into setup, training and evaluation at the log's own
lines. Absent where stdout is not a file (a pipe).

Lines: {"t": unix time, "pid": N, "event": "start", "cwd": "...", "log": N}
       {"t": ..., "pid": N, "event": "open", "path": "...", "mode": "r", "log": N[, "real": "..."]}
       {"t": ..., "pid": N, "event": "connect", "address": "host:port", "log": N}
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

AUDIT_LOG = "audit.jsonl"


def _log_size() -> int | None:
    try:
        st = os.fstat(1)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _install(path: str) -> None:
    here = os.getcwd().rstrip("/") + "/"
    out = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: a killed run keeps what it wrote
    busy = False
    # A file opened again and again (a memmap per batch) is written once per mode until the
    # log grows: a shard read at setup and again during training must show both times.
    seen: dict[tuple[str, str], int | None] = {}

    def write(record: dict) -> None:
        nonlocal busy
        busy = True  # our own write must not be audited (it would recurse)
        try:
            out.write(json.dumps({"t": round(time.time(), 3), "pid": os.getpid(), **record, "log": _log_size()}) + "\n")
        except Exception:  # never break the script being watched
            pass
        finally:
            busy = False

    def hook(event: str, args: tuple) -> None:
        if busy:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.fsdecode(args[0])
            if name.endswith((".pyc", ".py", ".so")) and not os.path.abspath(name).startswith(here):
                return  # the interpreter's and libraries' code; the run folder's own modules are counted as its code
            mode = str(args[1]) if len(args) > 1 and args[1] is not None else "r"
            key = (os.path.abspath(name), mode)
            size = _log_size()
            if key in seen and (size is None or seen[key] == size):
                return
            seen[key] = size
            record = {"event": "open", "path": key[0], "mode": mode}
            real = os.path.realpath(key[0])  # a link named like a training file still names its target
            if real != key[0]:
                record["real"] = real
            write(record)
        elif event == "socket.connect" and len(args) > 1:
            address = args[1]
            text = f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)
            write({"event": "connect", "address": text})

    write({"event": "start", "cwd": os.getcwd()})
    sys.addaudithook(hook)


_install(os.path.abspath(AUDIT_LOG))  # resolved at start: a later chdir does not move it
