"""Read the trainer's log lines into metric points and summary facts (pure, no I/O).

The shapes are fixed by the trainer (CONTRACTS.md), for example::

    step:2/9000 train_loss:8.6545 train_time:166ms step_avg:82.93ms
    step:4000/9000 val_loss:2.0577 val_bpb:1.2187 train_time:333519ms step_avg:83.38ms
    stopping_early: wallclock_cap train_time:600128ms step:7179/9000
    peak memory allocated: 21471 MiB reserved: 22002 MiB
    Code size: 89458 bytes
    Serialized model int6+lzma: 15887928 bytes
    Total submission size int6+lzma: 15977386 bytes
    final_int6_sliding_window_exact val_loss:1.89385556 val_bpb:1.12165091

Logs arrive in chunks that may cut a line anywhere; `LogParser.feed` keeps the
unfinished tail until the rest of it arrives.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"

_TRAIN = re.compile(rf"^step:(\d+)/(\d+) train_loss:{_NUM} train_time:(\d+)ms\b")
_VAL = re.compile(rf"^step:(\d+)/(\d+) val_loss:{_NUM} val_bpb:{_NUM} train_time:(\d+)ms\b")
_STOP = re.compile(r"^stopping_early: (\S+) train_time:(\d+)ms step:(\d+)/(\d+)")
_PEAK = re.compile(r"^peak memory allocated: (\d+) MiB reserved: (\d+) MiB")
_CODE = re.compile(r"^Code size: (\d+) bytes")
_TOTAL = re.compile(r"^Total submission size (\S+): (\d+) bytes")
_MODEL = re.compile(r"^Serialized model (\S+): (\d+) bytes")
_FINAL = re.compile(rf"^(final_\S+) val_loss:{_NUM} val_bpb:{_NUM}")


@dataclass(frozen=True)
class MetricPoint:
    """One point of a loss curve; matches a row of the `metrics` table."""

    kind: str  # "train" | "val"
    step: int
    elapsed_ms: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_bpb: float | None = None


@dataclass
class LogSummary:
    """Facts the log states once (last one wins when a line repeats)."""

    total_steps: int | None = None  # the planned step count, N in step:k/N
    last_step: int | None = None
    stopping_early: dict[str, Any] | None = None  # {"reason", "train_time_ms", "step"}
    peak_memory_allocated_mib: int | None = None
    peak_memory_reserved_mib: int | None = None
    code_bytes: int | None = None
    model_bytes: int | None = None
    total_bytes: int | None = None
    total_bytes_format: str | None = None  # e.g. "int6+lzma"
    finals: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {val_loss, val_bpb}

    @property
    def final(self) -> dict[str, float] | None:
        """The score that counts: TTT when present, else the last final_* line."""
        if "final_ttt" in self.finals:
            return self.finals["final_ttt"]
        return next(reversed(self.finals.values()), None)


def parse_line(line: str, summary: LogSummary) -> MetricPoint | None:
    """Parse one complete line: update `summary`, return a metric point if the line is one."""
    line = line.strip()
    if m := _TRAIN.match(line):
        step, total = int(m[1]), int(m[2])
        _note_step(summary, step, total)
        return MetricPoint("train", step, int(m[4]), train_loss=float(m[3]))
    if m := _VAL.match(line):
        step, total = int(m[1]), int(m[2])
        _note_step(summary, step, total)
        return MetricPoint("val", step, int(m[5]), val_loss=float(m[3]), val_bpb=float(m[4]))
    if m := _STOP.match(line):
        summary.stopping_early = {"reason": m[1], "train_time_ms": int(m[2]), "step": int(m[3])}
        _note_step(summary, int(m[3]), int(m[4]))
    elif m := _PEAK.match(line):
        summary.peak_memory_allocated_mib = int(m[1])
        summary.peak_memory_reserved_mib = int(m[2])
    elif m := _CODE.match(line):
        summary.code_bytes = int(m[1])
    elif m := _MODEL.match(line):
        summary.model_bytes = int(m[2])
    elif m := _TOTAL.match(line):
        summary.total_bytes_format = m[1]
        summary.total_bytes = int(m[2])
    elif m := _FINAL.match(line):
        summary.finals[m[1]] = {"val_loss": float(m[2]), "val_bpb": float(m[3])}
    return None


# What makes a good failure reason, best first: a Python exception line
# ("RuntimeError: ..."), the trainer's own "error: ..." line or caddie's, then
# any line that looks like trouble (torchrun's "... FAILED" summary, "Killed").
_REASON_PATTERNS = (
    re.compile(r"^(\[[^\]]*\]:?\s*)?[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:"),
    re.compile(r"^(error|caddie):", re.IGNORECASE),
    re.compile(r"Error|Exception|FAILED|Killed|Traceback"),
)


def failure_reason(log_tail: str) -> str:
    """The line of a failed run's log tail that best says why (at most 500 chars); else its last line.

    torchrun's own wrapper errors (torch.distributed.elastic) are skipped: the
    failing rank's exception above them says more.
    """
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    for pattern in _REASON_PATTERNS:
        for line in reversed(lines):
            if pattern.search(line) and "torch.distributed.elastic" not in line:
                return line[:500]
    return lines[-1][:500] if lines else ""


def _note_step(summary: LogSummary, step: int, total: int) -> None:
    summary.total_steps = total
    summary.last_step = step if summary.last_step is None else max(summary.last_step, step)


def parse_text(text: str) -> tuple[list[MetricPoint], LogSummary]:
    """Parse a whole log at once."""
    parser = LogParser()
    points = parser.feed(text)
    points += parser.flush()
    return points, parser.summary


class LogParser:
    """Incremental parser: feed chunks in order, get the metric points of every completed line."""

    def __init__(self) -> None:
        self.summary = LogSummary()
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: str | bytes) -> list[MetricPoint]:
        if isinstance(chunk, bytes):
            # the incremental decoder keeps a multi-byte character split across chunks
            chunk = self._decoder.decode(chunk)
        text = self._partial + chunk
        *complete, self._partial = re.split(r"\r\n|\n|\r", text)
        points = []
        for line in complete:
            p = parse_line(line, self.summary)
            if p is not None:
                points.append(p)
        return points

    def flush(self) -> list[MetricPoint]:
        """Parse the unfinished last line (call once the log is complete)."""
        line, self._partial = self._partial + self._decoder.decode(b"", final=True), ""
        p = parse_line(line, self.summary) if line else None
        return [p] if p is not None else []
