"""caddie's watch on a script run, loaded by Python at start through PYTHONPATH (the
script is not changed): every file opened and every network connection, one JSON line
each, appended to audit.jsonl in the folder it starts in (a script run's folder: only
script runs get this folder on PYTHONPATH, and no caddie variable reaches the script). An audit hook (sys.addaudithook, PEP 578) sees the
opens of every library (numpy's memmap and torch's loads go through open too) in every
process of the run (torchrun's ranks inherit the env); /proc polling would miss a shard
opened and closed between two looks. A script that loads another sitecustomize first is
noted by the absence of the file, which the rules report as not watched.

Lines: {"t": unix time, "pid": N, "event": "open", "path": "...", "mode": "r"}
       {"t": ..., "pid": N, "event": "connect", "address": "host:port"}
"""

from __future__ import annotations

import json
import os
import sys
import time

AUDIT_LOG = "audit.jsonl"


def _install(path: str) -> None:
    out = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: a killed run keeps what it wrote
    busy = False
    seen: set[tuple[str, str]] = set()  # a file opened again and again (a memmap per batch) is written once per mode

    def write(record: dict) -> None:
        nonlocal busy
        busy = True  # our own write must not be audited (it would recurse)
        try:
            out.write(json.dumps({"t": round(time.time(), 3), "pid": os.getpid(), **record}) + "\n")
        except Exception:  # never break the script being watched
            pass
        finally:
            busy = False

    def hook(event: str, args: tuple) -> None:
        if busy:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.fsdecode(args[0])
            mode = str(args[1]) if len(args) > 1 and args[1] is not None else "r"
            key = (os.path.abspath(name), mode)
            if key not in seen and not name.endswith((".pyc", ".py", ".so")):
                seen.add(key)
                write({"event": "open", "path": key[0], "mode": mode})
        elif event == "socket.connect" and len(args) > 1:
            address = args[1]
            text = f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)
            write({"event": "connect", "address": text})

    sys.addaudithook(hook)


_install(os.path.abspath(AUDIT_LOG))  # resolved at start: a later chdir does not move it
