"""Read the log of a challenge-format train_gpt.py (pure, no I/O): live metric points,
and the run's figures, each with the line it came from.

The challenge's scripts print ``key:value`` fields, for example (the public records)::

    step:2/9000 train_loss:8.6545 train_time:166ms step_avg:82.93ms
    step:4000/9000 val_loss:2.0577 val_bpb:1.2187 train_time:333519ms step_avg:83.38ms
    stopping_early: wallclock_cap train_time:600128ms step:7179/9000
    Code size: 89458 bytes
    Total submission size int6+lzma: 15977386 bytes
    final_int6_sliding_window val_loss:1.8939 val_bpb:1.1217 stride:64 eval_time:74066ms
    final_int6_sliding_window_exact val_loss:1.89385556 val_bpb:1.12165091
    legal_ttt val_loss:1.8898 val_bpb:1.1192 eval_time:410268ms
    legal_ttt_exact val_loss:1.88976776 val_bpb:1.11922988

What counts:

| figure          | from                                                                        |
|-----------------|-----------------------------------------------------------------------------|
| val_loss/bpb    | the last ``<label>_exact val_loss:X val_bpb:Y`` line; with none, the last    |
|                 | ``final<...> val_loss:X val_bpb:Y`` line (a record's own final label)        |
| pre_ttt_bpb     | when the final's label names TTT: the last other ``*_exact`` line before it  |
| artifact bytes  | the last ``Total submission size ...: N bytes``                              |
| code, model     | the last ``Code size: N bytes``, ``Serialized model ...: N bytes``           |
| train seconds   | the largest ``train_time:Nms`` of the ``step:`` and ``stopping_early`` lines |
| eval seconds    | the sum of ``eval_time:Nms`` over the other lines (every evaluation)         |
| steps           | the largest N of ``step:N/M``                                                |

Lines may carry a launcher's prefix (``[rank0]: ``) and leading spaces; every
other line (warnings, tracebacks, a rank's half line) is kept in the log and
ignored here. Chunks may cut a line anywhere: ``feed`` keeps the unfinished tail,
and a last line that never ended is not read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from worker.logparse import MetricPoint

_PREFIX = re.compile(r"^\s*(?:\[[^\]\s]{1,40}\]:?\s*)?")
_PAIR = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*):(\S+)")
_LABEL = re.compile(r"^([A-Za-z_][A-Za-z0-9_.+\-]*)\s+(?=val_loss:)")
_MS = re.compile(r"^(\d+(?:\.\d+)?)ms$")
_STEP = re.compile(r"^(\d+)/(\d+)$")
_TOTAL = re.compile(r"^Total submission size(?: [^:]+)?: (\d+) bytes\s*$")
_CODE = re.compile(r"^Code size: (\d+) bytes\s*$")
_MODEL = re.compile(r"^Serialized model(?: [^:]+)?: (\d+) bytes\s*$")
_PEAK = re.compile(r"^peak memory allocated: (\d+) MiB")
SHOWN_CHARS = 300  # of a source line kept with its figure


@dataclass(frozen=True)
class Sourced:
    """A figure and the line of the log it was read from (1-based line number, the line itself)."""

    value: float
    line_no: int
    line: str

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "line_no": self.line_no, "line": self.line}


@dataclass(frozen=True)
class FinalLine:
    label: str
    val_loss: float
    val_bpb: float
    line_no: int
    line: str


@dataclass
class ScriptLogSummary:
    """What the log said so far (last line wins where a figure repeats)."""

    finals: list[FinalLine] = field(default_factory=list)  # every ``<label> val_loss:X val_bpb:Y`` line, in order
    artifact_bytes: Sourced | None = None
    code_bytes: Sourced | None = None
    model_bytes: Sourced | None = None
    train_ms: Sourced | None = None
    steps: Sourced | None = None
    eval_ms: list[Sourced] = field(default_factory=list)
    peak_memory_mib: Sourced | None = None

    @property
    def final(self) -> FinalLine | None:
        """The score that counts: the last ``*_exact`` line, else the last ``final*`` one."""
        exact = [f for f in self.finals if f.label.endswith("_exact")]
        if exact:
            return exact[-1]
        own = [f for f in self.finals if f.label.lower().startswith("final")]
        return own[-1] if own else None

    @property
    def pre_ttt(self) -> FinalLine | None:
        """When the final score is after test-time training: the last exact score before it."""
        final = self.final
        if final is None or "ttt" not in final.label.lower():
            return None
        before = [f for f in self.finals if f.line_no < final.line_no and f.label.endswith("_exact") and "ttt" not in f.label.lower()]
        return before[-1] if before else None

    @property
    def eval_seconds(self) -> float | None:
        return sum(s.value for s in self.eval_ms) / 1000.0 if self.eval_ms else None

    @property
    def train_seconds(self) -> float | None:
        return self.train_ms.value / 1000.0 if self.train_ms else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _ms(text: str) -> float | None:
    m = _MS.match(text)
    return float(m[1]) if m else None


def parse_script_line(raw: str, line_no: int, summary: ScriptLogSummary) -> MetricPoint | None:
    """Read one complete line into ``summary``; return a metric point if it is a step line."""
    line = raw[_PREFIX.match(raw).end() :].rstrip()  # type: ignore[union-attr]  (the prefix pattern always matches)
    if not line:
        return None
    shown = line[:SHOWN_CHARS]

    def src(value: float) -> Sourced:
        return Sourced(value, line_no, shown)

    if m := _TOTAL.match(line):
        summary.artifact_bytes = src(int(m[1]))
        return None
    if m := _CODE.match(line):
        summary.code_bytes = src(int(m[1]))
        return None
    if m := _MODEL.match(line):
        summary.model_bytes = src(int(m[1]))
        return None
    if m := _PEAK.match(line):
        summary.peak_memory_mib = src(int(m[1]))
        return None
    pairs = dict(_PAIR.findall(line))
    if not pairs:
        return None
    step = _STEP.match(pairs.get("step", ""))
    train_ms = _ms(pairs.get("train_time", ""))
    if step and (line.startswith("step:") or line.startswith("stopping_early:")):
        n = int(step[1])
        if summary.steps is None or n >= summary.steps.value:
            summary.steps = src(n)
        if train_ms is not None and (summary.train_ms is None or train_ms >= summary.train_ms.value):
            summary.train_ms = src(train_ms)
        if not line.startswith("step:"):
            return None
        elapsed = int(train_ms if train_ms is not None else (summary.train_ms.value if summary.train_ms else 0))
        train_loss = _number(pairs.get("train_loss", ""))
        val_loss, val_bpb = _number(pairs.get("val_loss", "")), _number(pairs.get("val_bpb", ""))
        if val_loss is not None and val_bpb is not None:
            return MetricPoint("val", n, elapsed, val_loss=val_loss, val_bpb=val_bpb)
        if train_loss is not None:
            return MetricPoint("train", n, elapsed, train_loss=train_loss)
        return None
    eval_ms = _ms(pairs.get("eval_time", ""))
    if eval_ms is not None:
        summary.eval_ms.append(src(eval_ms))
    label = _LABEL.match(line)
    val_loss, val_bpb = _number(pairs.get("val_loss", "")), _number(pairs.get("val_bpb", ""))
    if label and val_loss is not None and val_bpb is not None:
        summary.finals.append(FinalLine(label[1], val_loss, val_bpb, line_no, shown))
    return None


class ScriptLogParser:
    """Incremental: feed chunks in order, get the metric points of every completed line."""

    def __init__(self) -> None:
        self.summary = ScriptLogSummary()
        self._partial = ""
        self._lines = 0

    def feed(self, chunk: str) -> list[MetricPoint]:
        *complete, self._partial = re.split(r"\r\n|\n|\r", self._partial + chunk)
        points = []
        for line in complete:
            self._lines += 1
            p = parse_script_line(line, self._lines, self.summary)
            if p is not None:
                points.append(p)
        return points

    def flush(self) -> list[MetricPoint]:
        """End of the log: an unfinished last line is dropped, not read. print() ends every
        line, so a line without its end was cut off (a killed job), and a number cut
        short (val_bpb:1.1 of val_bpb:1.1192) must not become a figure."""
        self._partial = ""
        return []


def parse_script_log(text: str) -> tuple[list[MetricPoint], ScriptLogSummary]:
    """Parse a whole log at once."""
    parser = ScriptLogParser()
    points = parser.feed(text)
    points += parser.flush()
    return points, parser.summary


@dataclass(frozen=True)
class ScriptResult:
    """A finished script's figures for the run's columns, or why it has none."""

    values: dict[str, Any]  # run columns: val_bpb, val_loss, artifact_bytes, ...
    sources: dict[str, Any]  # column -> the line(s) it came from
    problem: str | None  # set: the run fails with this reason


def script_result(summary: ScriptLogSummary) -> ScriptResult:
    """The run's columns from its log's summary. No final figure (or one that is not a
    finite number) is a problem: the run cannot be scored."""
    sources: dict[str, Any] = {}
    values: dict[str, Any] = {}
    final = summary.final
    problem = None
    if final is None:
        problem = "the script's log has no final figure (a '<label>_exact val_loss:X val_bpb:Y' line)"
    elif not (math.isfinite(final.val_bpb) and math.isfinite(final.val_loss)):
        problem = f"the script's final figure is not a finite number (line {final.line_no}: {final.line})"
    else:
        values.update(val_bpb=final.val_bpb, val_loss=final.val_loss)
        sources["val_bpb"] = sources["val_loss"] = {"line_no": final.line_no, "line": final.line, "label": final.label}
    pre = summary.pre_ttt
    if pre is not None and math.isfinite(pre.val_bpb):
        values["pre_ttt_bpb"] = pre.val_bpb
        sources["pre_ttt_bpb"] = {"line_no": pre.line_no, "line": pre.line, "label": pre.label}
    for column, figure, kind in (("artifact_bytes", summary.artifact_bytes, int), ("code_bytes", summary.code_bytes, int),
                                 ("model_bytes", summary.model_bytes, int), ("steps", summary.steps, int),
                                 ("peak_memory_mib", summary.peak_memory_mib, float)):
        if figure is not None:
            values[column] = kind(figure.value)
            sources[column] = figure.to_json()
    if summary.train_ms is not None:
        values["train_seconds"] = summary.train_seconds
        sources["train_seconds"] = summary.train_ms.to_json()
    if summary.eval_ms:
        values["eval_seconds"] = summary.eval_seconds
        sources["eval_seconds"] = [s.to_json() for s in summary.eval_ms]
    return ScriptResult(values, sources, problem)
