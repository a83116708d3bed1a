"""What a script run touched, from its audit.jsonl and its log (pure: bytes in, a summary out).

::

    audit.jsonl (worker/audit/sitecustomize.py: every open and connect, each with the
        size of stdout.log when it happened) ─┐
    stdout.log (the first training line, the  ├─▶ summarise ─▶ the run's touches
        training-end line: log_marks)        ─┘      (runs.result["touches"])

Each event falls in a phase by where the log stood when it happened, not by a clock:

    setup   the log had not reached its first training line (step 1's line, or warmup's):
            a script loads its data here, the validation shards too (every record does, to
            score during training); indistinguishable from the first step's reads
    train   past the first training line and before the training-end line is written
            (the line with the largest train_time: the last step's, or stopping_early)
    eval    the training-end line is written: serialisation and evaluation

A log without a training line leaves every event in setup; one without a training-end
line (a killed run) leaves every event past its first training line in train. An event
without a log size (stdout not a file) has no phase.

The summary keeps every validation-shard open and every connection (the rules judge them,
service.results.rules), and the files opened with the first time in each phase, the run
folder's first, up to MAX_FILES.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.runs.logparse import SHOWN_CHARS, read_line

SETUP, TRAIN, EVAL = "setup", "train", "eval"
MAX_FILES = 200  # files listed in the summary (every one is still counted)
MAX_JUDGED = 100  # validation opens and connections kept for the rules (the count is kept too)
_WARMUP = re.compile(r"^\s*(?:\[[^\]\s]{1,40}\]:?\s*)?(?:1\d{9}(?:\.\d+)?\s+)?warmup_step\s*:")
_UNIX_T = re.compile(r"^\s*(?:\[[^\]\s]{1,40}\]:?\s*)?(1\d{9}(?:\.\d+)?)\s")


@dataclass(frozen=True)
class LogMark:
    """A line of the log that splits the run: where it starts and ends (bytes), its number and text."""

    start: int
    end: int
    line_no: int
    line: str
    t: float | None = None  # the line's own unix timestamp, where the log prints one

    def to_json(self) -> dict[str, Any]:
        return {"log_offset": self.start, "log_end": self.end, "line_no": self.line_no, "line": self.line, "t": self.t}


@dataclass(frozen=True)
class LogMarks:
    train_start: LogMark | None  # the first training line
    train_end: LogMark | None  # the training-end line


def log_marks(log: bytes) -> LogMarks:
    """The first training line (a ``step:`` line with a train loss, or a ``warmup_step:`` line)
    and the training-end line (the largest train_time of the step and stopping lines; the
    last of equals), as the parser reads them (service.runs.logparse.read_line)."""
    start: LogMark | None = None
    end: LogMark | None = None
    best = -1.0
    offset = 0
    for no, raw in enumerate(log.split(b"\n"), start=1):
        nxt = offset + len(raw) + 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        parsed = read_line(text)
        unix = _UNIX_T.match(text)
        mark = LogMark(offset, min(nxt, len(log)), no, text.strip()[:SHOWN_CHARS], float(unix[1]) if unix else None)
        if start is None and ((parsed is not None and parsed.is_step and parsed.train_loss is not None) or _WARMUP.match(text)):
            start = mark
        if parsed is not None and parsed.train_ms is not None and (parsed.is_step or parsed.stopping_early is not None) and parsed.train_ms >= best:
            best, end = parsed.train_ms, mark
        offset = nxt
    return LogMarks(start, end)


def read_events(text: str) -> list[dict[str, Any]]:
    """audit.jsonl's events; a line cut by a killed process (or not JSON) is skipped."""
    events = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("t"), (int, float)) and isinstance(e.get("event"), str):
            events.append(e)
    return events


def phase_of(event: Mapping[str, Any], marks: LogMarks) -> str | None:
    size = event.get("log")
    if not isinstance(size, int):
        return None
    if marks.train_start is None or size <= marks.train_start.start:
        return SETUP
    if marks.train_end is None or marks.train_end.start < marks.train_start.start or size < marks.train_end.end:
        return TRAIN
    return EVAL


def is_val_shard(path: str) -> bool:
    """A validation shard of the challenge's data (``fineweb_val_*``, the CaseOps byte sidecars too)."""
    return os.path.basename(path).startswith("fineweb_val_")


def _shown(path: str, cwd: str | None) -> str:
    if cwd and path.startswith(cwd.rstrip("/") + "/"):
        return path[len(cwd.rstrip("/")) + 1 :]
    return path


def _module(path: str) -> str:
    """``pkg/__pycache__/helper.cpython-311.pyc`` -> ``pkg/helper.py``; a .py stays itself."""
    if path.endswith(".pyc") and "/__pycache__/" in f"/{path}":
        head, _, name = path.rpartition("__pycache__/")
        return f"{head}{name.split('.', 1)[0]}.py"
    return path


def _mark_time(events: list[dict[str, Any]], mark: LogMark | None) -> float | None:
    """When the log got to ``mark``: its own timestamp, else the first event seen after it was written (an upper bound)."""
    if mark is None:
        return None
    if mark.t is not None:
        return mark.t
    after = [float(e["t"]) for e in events if isinstance(e.get("log"), int) and e["log"] >= mark.end]
    return min(after) if after else None


def summarise(events: Iterable[Mapping[str, Any]], log: bytes) -> dict[str, Any]:
    """The run's touches: the training window (lines, byte offsets, times), the files opened
    (first time per phase), every validation-shard open and every connection, each with its
    time (unix) and phase."""
    evs = sorted((dict(e) for e in events), key=lambda e: float(e["t"]))
    marks = log_marks(log)
    cwd = next((str(e["cwd"]) for e in evs if e.get("event") == "start" and e.get("cwd")), None)
    files: dict[tuple[str, str], dict[str, Any]] = {}
    val_opens: list[dict[str, Any]] = []
    connections: list[dict[str, Any]] = []
    n_val = n_conn = 0
    for e in evs:
        phase = phase_of(e, marks)
        t = float(e["t"])
        if e["event"] == "open":
            path, real = str(e.get("path", "")), str(e.get("real") or "")
            entry = files.setdefault((path, str(e.get("mode", "r"))), {"path": _shown(path, cwd), "mode": str(e.get("mode", "r")), "first": {}})
            if real:
                entry["real"] = real
            entry["first"].setdefault(phase or "unknown", t)
            if is_val_shard(path) or (real and is_val_shard(real)):
                n_val += 1
                if len(val_opens) < MAX_JUDGED:
                    val_opens.append({"path": _shown(path, cwd), **({"real": real} if real else {}), "t": t, "phase": phase})
        elif e["event"] == "connect":
            n_conn += 1
            if len(connections) < MAX_JUDGED:
                connections.append({"address": str(e.get("address", "")), "t": t, "phase": phase})
    inside = sorted(files.values(), key=lambda f: (f["path"].startswith("/"), min(f["first"].values())))
    code = sorted({_module(f["path"]) for f in files.values() if not f["path"].startswith("/") and f["path"].endswith((".py", ".pyc"))})
    return {
        "watched": True,
        "t0": float(evs[0]["t"]) if evs else None,
        "phases_by_log": any(isinstance(e.get("log"), int) for e in evs),
        "train_start": {**marks.train_start.to_json(), "t": _mark_time(evs, marks.train_start)} if marks.train_start else None,
        "train_end": {**marks.train_end.to_json(), "t": _mark_time(evs, marks.train_end)} if marks.train_end else None,
        "code_opened": code,  # the run folder's modules it loaded (a compiled one as its .py): its code, counted
        "files": inside[:MAX_FILES],
        "files_total": len(files),
        "val_opens": val_opens,
        "val_opens_total": n_val,
        "connections": connections,
        "connections_total": n_conn,
        "events": len(evs),
    }


def unwatched(why: str) -> dict[str, Any]:
    """The touches of a script run that left no audit (its hook did not load, or the launcher does not keep the file)."""
    return {"watched": False, "why": why}
