"""The one reader of challenge-format logs (pure, no I/O): the shared trainer's and a
team's own train_gpt.py's, which print the same ``key:value`` conventions::

    step:2/9000 train_loss:8.6545 train_time:166ms step_avg:82.93ms
    step:4000/9000 val_loss:2.0577 val_bpb:1.2187 train_time:333519ms step_avg:83.38ms
    stopping_early: wallclock_cap train_time:600128ms step:7179/9000
    peak memory allocated: 21471 MiB reserved: 22002 MiB
    Code size: 89458 bytes
    Serialized model int6+lzma: 15887928 bytes
    Total submission size int6+lzma: 15977386 bytes
    final_int6_sliding_window val_loss:1.8939 val_bpb:1.1217 stride:64 eval_time:74066ms
    final_int6_sliding_window_exact val_loss:1.89385556 val_bpb:1.12165091
    legal_ttt_exact val_loss:1.88976776 val_bpb:1.11922988

How it reads:

- ``read_line`` turns one line into a ``LogLine`` (what the line states), or None.
  Lines may carry a launcher's prefix (``[rank0]: ``) and leading spaces; every
  other line (warnings, tracebacks, a rank's half line) is ignored.
- A parser splits chunks into lines (a chunk may cut a line, or a UTF-8
  character, anywhere), makes a ``MetricPoint`` of every ``step:`` line with a
  loss, and folds each ``LogLine`` into its summary:

  - ``LogParser`` (the shared trainer) into ``LogSummary``: plain figures; the
    score is ``final_ttt`` when present, else the last ``final_*`` line. Its
    result.json is the source of truth and its log the fallback.
  - ``ScriptLogParser`` (a script run) into ``ScriptLogSummary``: each figure
    with the line it came from, since the log is the script run's only result.
    ``script_result`` turns that into the run's columns:

| figure          | from                                                                        |
|-----------------|-----------------------------------------------------------------------------|
| val_loss/bpb    | the last finite score line (``*_exact``, ``final*``, ``quantized*``, ``*ttt*``|
|                 | labels); a TTT line worse than the score before it is a failed attempt      |
| pre_ttt_bpb     | when the final's label names TTT: the last other ``*_exact`` line before it, |
|                 | else the last score or ``diagnostic quantized`` line before it               |
| artifact bytes  | the last ``Total submission size ...: N bytes`` (or ``budget:N/LIMIT``)      |
| code, model     | the last ``Code size[ (compressed)]: N bytes`` (or ``artifact:... code:N``), |
|                 | ``Serialized model ...: N``                                                  |
| train seconds   | the largest ``train_time:Nms`` (or ``: N.Nm``, or a step line's ``t:Nms``)   |
|                 | of the step/stopping lines                                                   |
| eval seconds    | the sum of ``eval_time:Nms`` over the other lines (every evaluation)         |
| steps           | the largest N of ``step:N/M`` (or a line starting ``N/M key:``)              |
| curve           | every step line with ``train_loss`` (or ``loss``), or val_loss and val_bpb   |

Lines may start with a unix timestamp; pairs may be ``key: value``.

``failure_reason`` picks the line of a failed run's log tail that says why.
"""

from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

# --- one line ---------------------------------------------------------------------------------

# a launcher's ``[rank0]: `` and/or a unix timestamp (``1776143353.675 ``, 2026-04-13's logs)
_PREFIX = re.compile(r"^\s*(?:\[[^\]\s]{1,40}\]:?\s*)?(?:1\d{9}(?:\.\d+)?\s+)?")
# ``key:value``; a record of 2026-04 writes ``key: value`` (one space after the colon)
_PAIR = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*): ?([^\s:]\S*)")
# a score line's label may be followed by other pairs before val_loss (``..._exact stride:64 val_loss:``)
# and may be a few words (``diagnostic quantized``, ``diagnostic pre-quantization post-ema``)
_LABEL = re.compile(r"^([A-Za-z_][A-Za-z0-9_.+\-]*(?: [A-Za-z_][A-Za-z0-9_.+\-]*){0,3}?)\s+(?=(?:[A-Za-z_]\w*: ?\S+\s+)*val_loss:)")
_MS = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")  # ms; s and m (``train_time: 9.8m``) are rounded
_MS_PER = {"ms": 1.0, "s": 1000.0, "m": 60000.0}
_BARE_STEP = re.compile(r"^(\d+)/(\d+)\s")  # ``5962/20000 train_loss: ...``, a step line without ``step:``
_STEP = re.compile(r"^(\d+)/(\d+)$")
_STOP = re.compile(r"^stopping_early:\s*(\S*)")
_TOTAL = re.compile(r"^Total submission size(?: ([^:]+))?: (\d+) bytes\s*$")
_CODE = re.compile(r"^Code size(?: \([^)]*\))?: (\d+) bytes\s*$")  # also ``Code size (compressed): N bytes``
_MODEL = re.compile(r"^Serialized model(?: [^:]+)?: (\d+) bytes\s*$")
# 2026-03-24's ternary record: ``budget:15993853/16000000 (15.99/16.00MB) FITS`` (the total against the limit)
# and ``artifact:15.92MB ternary:... code:70853`` (the model only rounded, the code exact)
_BUDGET = re.compile(r"^budget:(\d+)/\d+\b")
_ARTIFACT_CODE = re.compile(r"^artifact:\S+\s.*\bcode:(\d+)\s*$")
_PEAK = re.compile(r"^peak memory allocated: (\d+) MiB(?: reserved: (\d+) MiB)?")
_SCORE_LABEL = re.compile(r"_exact$|^final|^quantized|ttt", re.IGNORECASE)
SHOWN_CHARS = 300  # of a line kept as the source of its figure


@dataclass(frozen=True)
class MetricPoint:
    """One point of a loss curve; matches a row of the `metrics` table (the API's body of a
    point, service.runs.schemas.MetricOut, is this class)."""

    kind: str  # "train" | "val"
    step: int
    elapsed_ms: float  # the metrics table's type; the parser's are whole milliseconds
    train_loss: float | None = None
    val_loss: float | None = None
    val_bpb: float | None = None


@dataclass(frozen=True)
class LogLine:
    """What one line of the conventions states; what it does not state is None."""

    text: str  # the line without its prefix, cut to SHOWN_CHARS
    is_step: bool = False  # a ``step:N/M ...`` line (a point of the curve when it has a loss)
    step: int | None = None  # N of ``step:N/M`` on a step or stopping_early line
    total_steps: int | None = None  # M, the planned step count
    train_ms: float | None = None  # train_time of those lines
    train_loss: float | None = None
    val_loss: float | None = None  # on a step line, or on a score line with its label
    val_bpb: float | None = None
    stopping_early: str | None = None  # the reason
    label: str | None = None  # a score line: ``<label> val_loss:X val_bpb:Y``
    eval_ms: float | None = None  # eval_time of any line but the step ones
    peak_allocated_mib: int | None = None
    peak_reserved_mib: int | None = None
    code_bytes: int | None = None
    model_bytes: int | None = None
    total_bytes: int | None = None
    total_bytes_format: str | None = None  # e.g. "int6+lzma"


def read_line(raw: str) -> LogLine | None:
    """What one complete line states, or None when it is none of the conventions'."""
    line = raw[_PREFIX.match(raw).end() :].rstrip()  # type: ignore[union-attr]  # the prefix pattern always matches
    if not line:
        return None
    shown = line[:SHOWN_CHARS]
    if m := _TOTAL.match(line):
        return LogLine(shown, total_bytes=int(m[2]), total_bytes_format=m[1])
    if m := _CODE.match(line):
        return LogLine(shown, code_bytes=int(m[1]))
    if m := _MODEL.match(line):
        return LogLine(shown, model_bytes=int(m[1]))
    if m := _BUDGET.match(line):
        return LogLine(shown, total_bytes=int(m[1]))
    if m := _ARTIFACT_CODE.match(line):
        return LogLine(shown, code_bytes=int(m[1]))
    if m := _PEAK.match(line):
        return LogLine(shown, peak_allocated_mib=int(m[1]), peak_reserved_mib=int(m[2]) if m[2] else None)
    pairs = dict(_PAIR.findall(line))
    if not pairs:
        return None
    step = _STEP.match(pairs.get("step", ""))
    bare = _BARE_STEP.match(line)
    if bare and step is None:
        step = bare
    if step and (line.startswith("step:") or bare):
        # ``loss:`` and ``t:`` are the short names the ternary record's step lines use for train_loss and train_time
        return LogLine(shown, is_step=True, step=int(step[1]), total_steps=int(step[2]),
                       train_ms=_ms(pairs.get("train_time") or pairs.get("t", "")),
                       train_loss=_number(pairs.get("train_loss") or pairs.get("loss", "")), val_loss=_number(pairs.get("val_loss", "")),
                       val_bpb=_number(pairs.get("val_bpb", "")))  # fmt: skip
    if step and (stop := _STOP.match(line)):
        return LogLine(shown, step=int(step[1]), total_steps=int(step[2]), train_ms=_ms(pairs.get("train_time", "")), stopping_early=stop[1])
    eval_ms = _ms(pairs.get("eval_time", ""))
    label = _LABEL.match(line)
    val_loss, val_bpb = _number(pairs.get("val_loss", "")), _number(pairs.get("val_bpb", ""))
    if label and val_loss is not None and val_bpb is not None:
        return LogLine(shown, label=label[1], val_loss=val_loss, val_bpb=val_bpb, eval_ms=eval_ms)
    return LogLine(shown, eval_ms=eval_ms) if eval_ms is not None else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _ms(text: str) -> float | None:
    m = _MS.match(text)
    return float(m[1]) * _MS_PER[m[2]] if m else None


# --- what a log said: the shared trainer's reading -------------------------------------------


@dataclass
class LogSummary:
    """The shared trainer's log: facts it states once (last one wins when a line repeats)."""

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

    def add(self, line: LogLine, line_no: int) -> None:  # line_no unused: the trainer's figures keep no source line
        if line.step is not None:
            self.total_steps = line.total_steps
            self.last_step = line.step if self.last_step is None else max(self.last_step, line.step)
        if line.stopping_early is not None:
            train_ms = int(line.train_ms) if line.train_ms is not None else None
            self.stopping_early = {"reason": line.stopping_early, "train_time_ms": train_ms, "step": line.step}
        if line.peak_allocated_mib is not None:
            self.peak_memory_allocated_mib, self.peak_memory_reserved_mib = line.peak_allocated_mib, line.peak_reserved_mib
        if line.code_bytes is not None:
            self.code_bytes = line.code_bytes
        if line.model_bytes is not None:
            self.model_bytes = line.model_bytes
        if line.total_bytes is not None:
            self.total_bytes, self.total_bytes_format = line.total_bytes, line.total_bytes_format
        if line.label is not None and line.label.startswith("final_"):
            self.finals[line.label] = {"val_loss": line.val_loss, "val_bpb": line.val_bpb}  # type: ignore[dict-item]  # a label comes with both

    def columns(self) -> dict[str, Any]:
        """The run's columns from the log, for a trainer run without its result.json."""
        values: dict[str, Any] = {}
        if self.final:
            values.update(val_bpb=self.final["val_bpb"], val_loss=self.final["val_loss"])
        for column, value in (("artifact_bytes", self.total_bytes), ("code_bytes", self.code_bytes), ("steps", self.last_step),
                              ("peak_memory_mib", self.peak_memory_allocated_mib)):  # fmt: skip
            if value is not None:
                values[column] = value
        return values


# --- what a log said: a script run's reading, every figure with its line ---------------------


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
    """A script's log: what it said so far (last line wins where a figure repeats)."""

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
        """The score that counts, as the maintainers read a log: the last score line
        (``*_exact``, ``final*``, ``quantized*`` or one naming TTT; ``diagnostic ...`` lines
        are not score lines) whose figures are finite numbers: a TTT attempt that failed
        at the end (nan) leaves the score before it. With no finite one, the last line."""
        scores = [f for f in self.finals if _SCORE_LABEL.search(f.label)]
        finite = [f for f in scores if math.isfinite(f.val_bpb) and math.isfinite(f.val_loss)]
        if not finite:
            return scores[-1] if scores else None
        last = finite[-1]
        # A TTT score worse than the score before TTT is a failed attempt (2026-04-04's
        # seed 42: 1.3360 after 1.0898): the record states the score before it.
        before = [f for f in finite if f.line_no < last.line_no and "ttt" not in f.label.lower()]
        if "ttt" in last.label.lower() and before and last.val_bpb > before[-1].val_bpb:
            return before[-1]
        return last

    @property
    def pre_ttt(self) -> FinalLine | None:
        """When the final score is after test-time training: the last exact score before it;
        with none, the last score line or ``diagnostic quantized`` line (phased-TTT logs)."""
        final = self.final
        if final is None or "ttt" not in final.label.lower():
            return None
        before = [f for f in self.finals if f.line_no < final.line_no and "ttt" not in f.label.lower()
                  and (_SCORE_LABEL.search(f.label) or f.label.startswith("diagnostic quantized")) and math.isfinite(f.val_bpb)]
        exact = [f for f in before if f.label.endswith("_exact")]
        return (exact or before)[-1] if exact or before else None

    @property
    def eval_seconds(self) -> float | None:
        return sum(s.value for s in self.eval_ms) / 1000.0 if self.eval_ms else None

    @property
    def train_seconds(self) -> float | None:
        return self.train_ms.value / 1000.0 if self.train_ms else None

    def add(self, line: LogLine, line_no: int) -> None:
        def src(value: float) -> Sourced:
            return Sourced(value, line_no, line.text)

        if line.total_bytes is not None:
            self.artifact_bytes = src(line.total_bytes)
        if line.code_bytes is not None:
            self.code_bytes = src(line.code_bytes)
        if line.model_bytes is not None:
            self.model_bytes = src(line.model_bytes)
        if line.peak_allocated_mib is not None:
            self.peak_memory_mib = src(line.peak_allocated_mib)
        if line.step is not None and (self.steps is None or line.step >= self.steps.value):
            self.steps = src(line.step)
        if line.train_ms is not None and (self.train_ms is None or line.train_ms >= self.train_ms.value):
            self.train_ms = src(line.train_ms)
        if line.eval_ms is not None:
            self.eval_ms.append(src(line.eval_ms))
        if line.label is not None:
            self.finals.append(FinalLine(line.label, line.val_loss, line.val_bpb, line_no, line.text))  # type: ignore[arg-type]  # a label comes with both


@dataclass(frozen=True)
class ScriptResult:
    """A finished script's figures for the run's columns, or why it has none."""

    values: dict[str, Any]  # run columns: val_bpb, val_loss, artifact_bytes, ...
    sources: dict[str, Any]  # column -> the line(s) it came from
    problem: str | None  # set: the run fails with this reason


def script_result(summary: ScriptLogSummary, score_label: str | None = None) -> ScriptResult:
    """The run's columns from its log's summary. No final figure (or one that is not a
    finite number) is a problem: the run cannot be scored. ``score_label`` (a spec's regex,
    matched in full): the score is the last line whose label it matches."""
    sources: dict[str, Any] = {}
    values: dict[str, Any] = {}
    final = summary.final
    if score_label is not None:
        named = [f for f in summary.finals if re.fullmatch(score_label, f.label)]
        final = named[-1] if named else None
    problem = None
    seen = "; ".join(f"line {f.line_no}: {f.line[:80]}" for f in summary.finals[-5:]) or "none"
    if final is None and score_label is not None:
        problem = f"no line of the script's log has a label matching score_label {score_label!r}; lines with val_loss and val_bpb seen: {seen}"
    elif final is None:
        problem = ("the script's log has no final figure (a '<label>_exact val_loss:X val_bpb:Y' line, or final*/quantized*/*ttt* "
                   f"labels; a spec may name its own with score_label); lines with val_loss and val_bpb seen: {seen}")
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


# --- a log arriving in chunks --------------------------------------------------------------------

S = TypeVar("S", LogSummary, ScriptLogSummary)


class _Parser(Generic[S]):
    """Feed chunks in order, get the metric points of every completed line; ``summary``
    holds what the lines said so far."""

    # Whether flush reads an unfinished last line (see the subclasses).
    reads_unfinished_line: bool

    def __init__(self, summary: S) -> None:
        self.summary: S = summary
        self._partial = ""
        self._lines = 0
        self._train_ms: float | None = None  # the latest training time, for a step line without its own
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: str | bytes) -> list[MetricPoint]:
        if isinstance(chunk, bytes):
            # the incremental decoder keeps a multi-byte character split across chunks
            chunk = self._decoder.decode(chunk)
        *complete, self._partial = re.split(r"\r\n|\n|\r", self._partial + chunk)
        points = [self._read(line) for line in complete]
        return [p for p in points if p is not None]

    def flush(self) -> list[MetricPoint]:
        """The log is complete: read its unfinished last line, or drop it."""
        line, self._partial = self._partial + self._decoder.decode(b"", final=True), ""
        p = self._read(line) if line and self.reads_unfinished_line else None
        return [p] if p is not None else []

    def _read(self, raw: str) -> MetricPoint | None:
        self._lines += 1
        line = read_line(raw)
        if line is None:
            return None
        self.summary.add(line, self._lines)
        if line.train_ms is not None and (self._train_ms is None or line.train_ms >= self._train_ms):
            self._train_ms = line.train_ms
        if not line.is_step or line.step is None:
            return None
        elapsed = int(line.train_ms if line.train_ms is not None else (self._train_ms or 0))
        if line.val_loss is not None and line.val_bpb is not None:
            return MetricPoint("val", line.step, elapsed, val_loss=line.val_loss, val_bpb=line.val_bpb)
        if line.train_loss is not None:
            return MetricPoint("train", line.step, elapsed, train_loss=line.train_loss)
        return None


class LogParser(_Parser[LogSummary]):
    """The shared trainer's log. Its last line is read even without its end: the figures
    that count come from result.json, the log only fills in when that is missing."""

    reads_unfinished_line = True

    def __init__(self) -> None:
        super().__init__(LogSummary())


class ScriptLogParser(_Parser[ScriptLogSummary]):
    """A script's log. An unfinished last line is dropped, not read: print() ends every
    line, so a line without its end was cut off (a killed job), and a number cut short
    (val_bpb:1.1 of val_bpb:1.1192) must not become the run's figure."""

    reads_unfinished_line = False

    def __init__(self) -> None:
        super().__init__(ScriptLogSummary())


def parse_text(text: str) -> tuple[list[MetricPoint], LogSummary]:
    """Parse a whole trainer log at once."""
    parser = LogParser()
    points = parser.feed(text) + parser.flush()
    return points, parser.summary


def parse_script_log(text: str) -> tuple[list[MetricPoint], ScriptLogSummary]:
    """Parse a whole script log at once."""
    parser = ScriptLogParser()
    points = parser.feed(text) + parser.flush()
    return points, parser.summary


# --- why a run failed ----------------------------------------------------------------------------

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
                return _with_hint(line[:500])
    return lines[-1][:500] if lines else ""


# A record's script that ran on the challenge's image fails to parse on an older Python (the 2026-04
# records nest quotes in f-strings, Python 3.12's syntax): the reason says what to change.
_SYNTAX_HINT = (" (code that parses on the challenge's image fails like this on an older Python: "
                "declare the run's environment.python, e.g. \"3.12\")")


def _with_hint(line: str) -> str:
    return line + _SYNTAX_HINT if line.startswith("SyntaxError") else line
