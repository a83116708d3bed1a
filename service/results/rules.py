"""The challenge's rules, checked on one run's facts (pure: plain values in, plain values out).

One function per rule. Each returns a ``Check``: pass, fail, or not comparable,
with a reason that names the figure and the limit. "Not comparable" means the
run cannot be judged on this rule (other hardware, a figure the run never
reported, a spec that opted out with ``allow_noncompliant``); it is never a pass.

The limits (trainer-spec.md, section 1):

| rule            | limit                                                   |
|-----------------|---------------------------------------------------------|
| artifact_bytes  | code bytes + compressed model bytes <= 16,000,000       |
|                 | (a script run's counted from its files: runs/bytes_check) |
| train_time      | <= 600 s on 8x H100 SXM (as the run reports it), 10min_16mb |
|                 | only; a run stopped by its own wallclock cap passes up to   |
|                 | 600 s + TRAIN_CAP_TOLERANCE_S, as the challenge accepted    |
| eval_time       | the scored evaluation (the log's total where it prints one) |
|                 | <= 600 s, likewise; diagnostic evaluations shown, not counted |
| full_val        | every target the challenge's own loader scores: it drops the |
|                 | last (N-1) mod seq_len tokens, so those may go unscored     |
| ttt_protocol    | test-time training is score-first (or absent); the shared   |
|                 | trainer's is probed in CI (tests/results/test_ttt_probe.py) |
| no_val_in_train | no training file has the content of a validation shard      |
|                 | (sha256 fingerprints; a val_* name fails too); a script run: |
|                 | no validation shard opened while it trained (its audit)     |
| code_revision   | the hash of the code that ran is recorded, with a dirty flag |
| no_network_in_eval | a script run connects to no remote address once its log   |
|                 | says training ended (its audit; loopback is not the network) |

Hardware is judged from what the run reports (GPU model, count; "PCIe"/"NVL"
models are not the SXM H100 the records ran on), never from the spec: what the worker
recorded of the node at launch (``nvidia-smi -L`` on it, runs.node_hardware) wins over
what the run's log says.

The same limits read before a run starts (the knobs of a ``10min_16mb`` spec that would make
its result incomparable) are service/runs/compliance.py's: a submit checks them there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from service.core.hardware import CPU, NodeHardware, accelerator_of
from service.runs.compliance import RECORD_TRACK
from trainer.config import ARTIFACT_LIMIT_BYTES, EVAL_LIMIT_SECONDS, TRAIN_LIMIT_SECONDS

RECORD_HARDWARE = "H100:8"
RECORD_GPUS = 8
# The challenge accepted 44 record logs stopped by their own wallclock cap between
# 600.008 and 600.137 s: a capped script checks the clock before a step, so it overshoots
# by under one step. Its training time passes up to the limit plus this tolerance.
TRAIN_CAP_TOLERANCE_S = 0.2
SCORE_FIRST = "score_first"
NO_TTT = "none"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_COMPARABLE = "not_comparable"
    # What caddie cannot verify for a script (e.g. its TTT protocol) and the team (or the
    # record) declares: listed as declared, never shown as a pass, and it does not block.
    DECLARED = "declared"


@dataclass(frozen=True)
class Check:
    """One rule checked on one run; a field's ``description`` (metadata) is what the API says of it."""

    rule: str
    verdict: Verdict = field(metadata={"description": "pass, fail, not_comparable, or declared (by the team or the record, not verified)"})
    reason: str
    figure: float | int | str | None = None
    limit: float | int | str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Check":
        return cls(rule=d["rule"], verdict=Verdict(d["verdict"]), reason=d.get("reason", ""), figure=d.get("figure"), limit=d.get("limit"))


@dataclass(frozen=True)
class RunFacts:
    """What a finished run reported, as the rules need it (None: not reported)."""

    track: str
    hardware: str
    allow_noncompliant: bool = False
    artifact_bytes: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    val_tokens_scored: int | None = None
    val_tokens_total: int | None = None
    ttt_protocol: str | None = None
    train_shards: Sequence[str] | None = None
    val_shards: Sequence[str] | None = None
    trainer_revision: str | None = None
    gpu_name: str | None = None
    world_size: int | None = None
    stopped_by_cap: bool | None = None  # training ended by the run's own wallclock cap
    diagnostic_eval_seconds: float | None = None  # evaluations that do not count (shown only)
    eval_seq_len: int | None = None  # the scored evaluation's sequence length (for full_val)
    train_fingerprints: Sequence[str] | None = None  # sha256 of each file the run trained on
    val_fingerprints: Sequence[str] | None = None  # sha256 of each validation shard
    code_sha256: str | None = None  # hash of the code that ran
    code_dirty: bool | None = None  # the code differs from its recorded revision
    # What a script run touched (service.runs.touches.summarise; {"watched": False, ...} when it
    # could not be watched); None: a run that is not watched (the shared trainer, a record's log).
    touches: Mapping[str, Any] | None = None
    logged_artifact_bytes: int | None = None  # a script run's log's own total, where its files were counted instead
    # What the worker recorded of the node at launch (runs.node_hardware): it wins over the log's gpu_name/world_size.
    node: NodeHardware | None = None

    @classmethod
    def from_result(cls, *, track: str, hardware: str, allow_noncompliant: bool, result: Mapping[str, Any] | None,
                    artifact_bytes: int | None = None, train_seconds: float | None = None,
                    eval_seconds: float | None = None, node: Mapping[str, Any] | None = None) -> "RunFacts":
        """Facts from the trainer's result.json; the run's columns win where given (``node``: runs.node_hardware)."""
        r = dict(result or {})
        return cls(
            track=track, hardware=hardware, allow_noncompliant=allow_noncompliant,
            artifact_bytes=artifact_bytes if artifact_bytes is not None else r.get("total_bytes"),
            train_seconds=train_seconds if train_seconds is not None else r.get("train_seconds"),
            eval_seconds=eval_seconds if eval_seconds is not None else r.get("eval_seconds"),
            val_tokens_scored=r.get("val_tokens_scored"), val_tokens_total=r.get("val_tokens_total"),
            ttt_protocol=r.get("ttt_protocol"), train_shards=r.get("train_shards"), val_shards=r.get("val_shards"),
            trainer_revision=r.get("trainer_revision"), gpu_name=r.get("gpu_name"), world_size=r.get("world_size"),
            stopped_by_cap=r.get("stopped_by_cap"), diagnostic_eval_seconds=r.get("diagnostic_eval_seconds"),
            eval_seq_len=r.get("eval_seq_len"), train_fingerprints=r.get("train_fingerprints"),
            val_fingerprints=r.get("val_fingerprints"), code_sha256=r.get("code_sha256"), code_dirty=r.get("code_dirty"),
            touches=r.get("touches"), logged_artifact_bytes=((r.get("bytes") or {}).get("artifact") or {}).get("log"),
            node=NodeHardware.from_json(node),
        )


def _missing(rule: str, what: str) -> Check:
    return Check(rule, Verdict.NOT_COMPARABLE, f"the run did not report {what}")


def is_record_gpu(gpu_name: str) -> bool:
    """An H100 SXM as the records ran on ("NVIDIA H100 80GB HBM3"); PCIe and NVL boards are slower."""
    name = gpu_name.upper()
    return "H100" in name and "PCIE" not in name and "NVL" not in name


def reported_gpus(facts: RunFacts) -> tuple[str | None, int | None, str]:
    """The GPU model and count to judge, and a note saying where they came from. What the
    worker recorded of the node at launch wins over what the run's own log says (a script
    prints what it likes); the log's model is kept only where the node gave just an
    accelerator name (SkyPilot: ``H100``) and the log names that accelerator's form factor."""
    node = facts.node
    if node is None:
        return facts.gpu_name, facts.world_size, ""
    name = node.gpu_name
    if node.gpus > 0 and name == accelerator_of(name) and facts.gpu_name and accelerator_of(str(facts.gpu_name)) == name:
        name = str(facts.gpu_name)
    logged = f"; its log says {facts.world_size}x {facts.gpu_name}" if facts.gpu_name is not None and facts.world_size is not None else ""
    return name if node.gpus > 0 else CPU, node.gpus, f" (as its node reported, {node.source}: what the node reported wins over the log{logged})"


def _off_record_hardware(facts: RunFacts) -> str | None:
    """Why the run's timings cannot be judged (None: they can), from what the run
    reported about its node; the spec's hardware is only what was asked for."""
    gpu_name, world_size, note = reported_gpus(facts)
    if facts.node is not None and facts.node.gpus <= 0:
        return f"on the CPU (no GPU){note}, not {RECORD_GPUS}x H100 SXM"
    if gpu_name is None or world_size is None:
        return "on hardware the run did not report (GPU model and count)"
    if not is_record_gpu(str(gpu_name)):
        return f"on {world_size}x {gpu_name}{note}, not {RECORD_GPUS}x H100 SXM"
    if world_size != RECORD_GPUS:
        return f"on {world_size}x {gpu_name}{note}, not {RECORD_GPUS}x"
    return None


def _seconds(x: float, limit: float) -> str:
    # One decimal, unless rounding would hide which side of the limit it is on
    # (600.001 s must not read "600.0 s > 600 s").
    short = f"{x:.1f}"
    if (float(short) <= limit) == (x <= limit) and (float(short) == limit) == (x == limit):
        return short
    return repr(float(x))


# --- the rules ----------------------------------------------------------------------
def check_artifact_bytes(facts: RunFacts) -> Check:
    """code + compressed model bytes <= 16,000,000 (decimal bytes)."""
    rule = "artifact_bytes"
    if facts.artifact_bytes is None:
        return _missing(rule, "its artifact size")
    size, limit = facts.artifact_bytes, ARTIFACT_LIMIT_BYTES
    logged = facts.logged_artifact_bytes
    note = f" (counted from its files; its log says {logged:,})" if logged is not None and logged != size else ""
    if size <= limit:
        return Check(rule, Verdict.PASS, f"artifact {size:,} bytes <= {limit:,}{note}", size, limit)
    return Check(rule, Verdict.FAIL, f"artifact {size:,} bytes > {limit:,} (over by {size - limit:,}){note}", size, limit)


def _time_rule(rule: str, what: str, seconds: float | None, limit: float, facts: RunFacts, *,
               tolerance: float = 0.0, note: str = "") -> Check:
    if seconds is None:
        return _missing(rule, f"its {what} time")
    shown = _seconds(seconds, limit)
    if facts.track != RECORD_TRACK:
        return Check(rule, Verdict.NOT_COMPARABLE,
                     f"{what} {shown} s; the {limit:.0f} s limit belongs to the {RECORD_TRACK} track, not {facts.track}", seconds, limit)
    off = _off_record_hardware(facts)
    if off is not None:
        return Check(rule, Verdict.NOT_COMPARABLE,
                     f"{what} {shown} s {off}; the {limit:.0f} s limit is judged on {RECORD_GPUS}x H100 SXM only", seconds, limit)
    if facts.node is not None:
        gpu_name, world_size, where = reported_gpus(facts)
        note = f" on {world_size}x {gpu_name}{where}{note}"
    if seconds <= limit:
        return Check(rule, Verdict.PASS, f"{what} {shown} s <= {limit:.0f} s{note}", seconds, limit)
    if tolerance and seconds <= limit + tolerance:
        return Check(rule, Verdict.PASS, f"{what} {shown} s, stopped by its own wallclock cap: within the {tolerance} s the "
                     f"challenge accepted over {limit:.0f} s (records up to 600.137 s){note}", seconds, limit + tolerance)
    return Check(rule, Verdict.FAIL, f"{what} {shown} s > {limit + tolerance:g} s{note}", seconds, limit + tolerance)


def check_train_time(facts: RunFacts) -> Check:
    """Training wallclock <= 600 s on 8x H100 SXM (compile warm-up and evaluation excluded);
    a run stopped by its own wallclock cap gets TRAIN_CAP_TOLERANCE_S."""
    tolerance = TRAIN_CAP_TOLERANCE_S if facts.stopped_by_cap else 0.0
    return _time_rule("train_time", "training", facts.train_seconds, TRAIN_LIMIT_SECONDS, facts, tolerance=tolerance)


def check_eval_time(facts: RunFacts) -> Check:
    """The scored evaluation, TTT included, <= 600 s on 8x H100 SXM; diagnostic evaluations
    (pre-quantization, extra strides) are shown but not counted, as the challenge judged."""
    note = ""
    if facts.diagnostic_eval_seconds:
        note = f" (diagnostic evaluations {facts.diagnostic_eval_seconds:.1f} s more, not counted)"
    return _time_rule("eval_time", "scored evaluation", facts.eval_seconds, EVAL_LIMIT_SECONDS, facts, note=note)


def full_val_floor(targets: int, seq_len: int | None) -> int:
    """The fewest targets that count as the full split: the challenge's own loader scores
    whole sequences of seq_len, dropping the last (N-1) mod seq_len of N-1 targets."""
    return targets - targets % seq_len if seq_len else targets


def check_full_val(facts: RunFacts) -> Check:
    """Every target the challenge's own loader scores (val_tokens_total: N-1 targets of N tokens)."""
    rule = "full_val"
    if facts.val_tokens_scored is None or facts.val_tokens_total is None:
        return _missing(rule, "how many validation tokens it scored")
    scored, total = facts.val_tokens_scored, facts.val_tokens_total
    floor = full_val_floor(total, facts.eval_seq_len)
    if scored >= total:
        return Check(rule, Verdict.PASS, f"scored {scored:,} of {total:,} validation tokens", scored, total)
    if scored >= floor:
        return Check(rule, Verdict.PASS, f"scored {scored:,} of {total:,} validation tokens: the challenge's loader scores "
                     f"{floor:,} (whole sequences of {facts.eval_seq_len})", scored, floor)
    return Check(rule, Verdict.FAIL, f"scored {scored:,} of {total:,} validation tokens ({floor - scored:,} fewer than the "
                 f"challenge's loader scores)", scored, floor)


def check_ttt_protocol(facts: RunFacts) -> Check:
    """Test-time training only on tokens already scored (score-first), or none at all."""
    rule = "ttt_protocol"
    if facts.ttt_protocol is None:
        return _missing(rule, "its TTT protocol")
    if facts.ttt_protocol in (SCORE_FIRST, NO_TTT):
        # The label is the shared trainer's; what makes it true is the perturbation probe of its
        # TTT code, run in CI (service/results/ttt_probe.py, tests/results/test_ttt_probe.py).
        return Check(rule, Verdict.PASS, f"TTT protocol {facts.ttt_protocol!r}; {SCORE_FIRST!r} or {NO_TTT!r} is legal "
                     "(the shared trainer's TTT passes caddie's perturbation probe in CI)", facts.ttt_protocol, SCORE_FIRST)
    return Check(rule, Verdict.FAIL, f"TTT protocol {facts.ttt_protocol!r}; only {SCORE_FIRST!r} (score a chunk, then adapt on it) is legal",
                 facts.ttt_protocol, SCORE_FIRST)


def check_no_val_in_train(facts: RunFacts) -> Check:
    """No training file with a validation shard's content (sha256), nor a fineweb_val_* name.
    Names alone prove nothing: a renamed validation shard has a training name."""
    rule = "no_val_in_train"
    if facts.touches is not None:
        return check_watched_val_reads(facts.touches)
    train = [str(s) for s in facts.train_shards or ()]
    val = {str(s) for s in facts.val_shards or ()}
    named = sorted(s for s in train if s in val or "_val_" in s)
    if named:
        return Check(rule, Verdict.FAIL, f"validation data among the training files: {', '.join(named[:3])}", len(named), 0)
    if facts.train_fingerprints is None or not facts.val_fingerprints:
        return _missing(rule, "the content fingerprints of its training and validation files")
    leaked = set(facts.train_fingerprints) & set(facts.val_fingerprints)
    if leaked:
        return Check(rule, Verdict.FAIL, f"{len(leaked)} training file(s) have the content of a validation shard "
                     f"(sha256 {sorted(leaked)[0][:12]}...)", len(leaked), 0)
    return Check(rule, Verdict.PASS, f"{len(facts.train_fingerprints)} training file(s), none with the content of the "
                 f"{len(facts.val_fingerprints)} validation shard(s)", 0, 0)


def check_code_revision(facts: RunFacts) -> Check:
    """The hash of the code that ran is recorded (with whether it differs from its commit)."""
    rule = "code_revision"
    revision = str(facts.trainer_revision or "")
    if not facts.code_sha256 and "sha256:" in revision:
        # a revision that is itself the code's hash (the trainer's bundle off git, a script's sha256)
        facts = replace(facts, code_sha256=revision.split("sha256:", 1)[1].strip(), trainer_revision=None)
    if facts.code_sha256 and str(facts.code_sha256).strip():
        rev = f" at {facts.trainer_revision}" if facts.trainer_revision else ""
        dirty = {True: ", with uncommitted changes (dirty)", False: ", clean"}.get(facts.code_dirty, ", dirty flag not reported")  # type: ignore[arg-type]
        return Check(rule, Verdict.PASS, f"code sha256 {facts.code_sha256}{rev}{dirty}", facts.code_sha256, None)
    if facts.trainer_revision and str(facts.trainer_revision).strip():
        return Check(rule, Verdict.FAIL, f"only the revision {facts.trainer_revision} is recorded, not the hash of the code "
                     "that ran (uncommitted edits would go unseen)", facts.trainer_revision, None)
    return Check(rule, Verdict.FAIL, "the hash of the code that ran is not recorded", None, None)


def check_network_in_eval(facts: RunFacts) -> Check:
    """no_network_in_eval on a run's facts (the rule is below, with the other watched one)."""
    return check_no_network_in_eval(facts.touches)


RULES: tuple[Callable[[RunFacts], Check], ...] = (
    check_artifact_bytes, check_train_time, check_eval_time, check_full_val,
    check_ttt_protocol, check_no_val_in_train, check_code_revision,
)
RULE_NAMES = ("artifact_bytes", "train_time", "eval_time", "full_val", "ttt_protocol", "no_val_in_train", "code_revision")
# Rules of a script run only (what it touched, watched by worker/audit): a run with ``touches``
# in its facts gets them; the shared trainer (caddie's own code) and record logs do not.
WATCHED_RULES: tuple[Callable[[RunFacts], Check], ...] = (check_network_in_eval,)
WATCHED_RULE_NAMES = ("no_network_in_eval",)


def check_run(facts: RunFacts) -> list[Check]:
    """Every rule on one run. A run that opted out (allow_noncompliant) is never a pass:
    its passes become "not comparable", its failures stay failures."""
    checks = [rule(facts) for rule in RULES]
    if facts.touches is not None:
        checks += [rule(facts) for rule in WATCHED_RULES]
    if facts.allow_noncompliant:
        checks = [c if c.verdict is not Verdict.PASS else
                  Check(c.rule, Verdict.NOT_COMPARABLE, f"{c.reason}; but the spec set allow_noncompliant", c.figure, c.limit)
                  for c in checks]
    return checks


def overall(checks: Iterable[Check]) -> Verdict:
    """fail if any check fails; else not comparable if any is; else pass when every verifiable
    check passes (declared ones do not block); all declared stays declared; none is not comparable."""
    verdicts = [c.verdict for c in checks]
    if not verdicts:
        return Verdict.NOT_COMPARABLE
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.NOT_COMPARABLE in verdicts:
        return Verdict.NOT_COMPARABLE
    return Verdict.PASS if Verdict.PASS in verdicts else Verdict.DECLARED


def declared(check: Check, by: str) -> Check:
    """A check caddie could not verify, turned into the declaration of ``by`` (never a pass)."""
    if check.verdict is not Verdict.NOT_COMPARABLE:
        return check
    return Check(check.rule, Verdict.DECLARED, f"declared by {by}, not verified by caddie ({check.reason})", check.figure, check.limit)


@dataclass(frozen=True)
class RuleSummary:
    """One rule over the runs of a group: the worst verdict and how many runs had each."""

    rule: str
    verdict: Verdict
    counts: dict[str, int] = field(default_factory=dict, metadata={"description": "runs per verdict"})
    reasons: list[str] = field(default_factory=list)  # the distinct reasons behind the worst verdict

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "verdict": self.verdict.value, "counts": self.counts, "reasons": self.reasons}


def summarise_group(per_run: Sequence[Sequence[Check]]) -> list[RuleSummary]:
    """Per rule across the group's runs: fail if any run fails, not comparable if any
    is, pass only when every run passes."""
    out = []
    checked = {c.rule for run in per_run for c in run}
    for name in RULE_NAMES + tuple(n for n in WATCHED_RULE_NAMES if n in checked):
        checks = [c for run in per_run for c in run if c.rule == name]
        verdict = overall(checks)
        counts = {v.value: sum(c.verdict is v for c in checks) for v in Verdict}
        if not counts[Verdict.DECLARED.value]:
            del counts[Verdict.DECLARED.value]  # shown only where a check was declared
        reasons = list(dict.fromkeys(c.reason for c in checks if c.verdict is verdict))  # distinct, in run order
        out.append(RuleSummary(name, verdict, counts, reasons))
    return out


# --- what a script touched (service.runs.touches's summary of worker/audit's events) ----------

NO_NETWORK_IN_EVAL = "no_network_in_eval"


def _when(touches: Mapping[str, Any], t: float) -> str:
    """An event's time: UTC, and seconds since the run's first process started."""
    t0 = touches.get("t0")
    clock = time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d} UTC"
    return f"{clock} (t+{t - float(t0):.1f} s)" if t0 is not None else clock


def _training(touches: Mapping[str, Any]) -> str:
    start, end = touches.get("train_start") or {}, touches.get("train_end") or {}
    def line(m: Mapping[str, Any]) -> str:
        return f"line {m['line_no']} ({str(m['line'])[:60]!r})" if m else "no such line"
    return f"training from log {line(start)} to {line(end)}"


def _unwatched(rule: str, touches: Mapping[str, Any] | None) -> Check | None:
    if touches is None:
        return _missing(rule, "what it touched (a run of the shared trainer, or a log alone, is not watched)")
    if not touches.get("watched"):
        return _missing(rule, f"what it touched: not watched ({touches.get('why') or 'no audit'})")
    if not touches.get("phases_by_log"):
        return _missing(rule, "where its log stood at each event (its stdout was not a file), so training cannot be told from evaluation")
    if not touches.get("train_start"):
        return _missing(rule, "a training line in its log, so training cannot be told apart")
    return None


def check_watched_val_reads(touches: Mapping[str, Any] | None) -> Check:
    """no_val_in_train from what the script opened: a validation shard opened while it trained
    (past its log's first training line, before its training-end line) fails. One opened at
    setup (every record loads its validation tokens there, to score during training) cannot be
    told from that use and is named in the reason."""
    rule = "no_val_in_train"
    if (missing := _unwatched(rule, touches)) is not None:
        return missing
    assert touches is not None
    opens = list(touches.get("val_opens") or ())
    bad = [o for o in opens if o.get("phase") == "train"]
    if bad:
        first = bad[0]
        return Check(rule, Verdict.FAIL, f"read validation shard {first['path']} during training at {_when(touches, float(first['t']))}; "
                     f"{_training(touches)}" + (f" ({len(bad)} such reads)" if len(bad) > 1 else ""), len(bad), 0)
    setup = sorted({o["path"] for o in opens if o.get("phase") == "setup"})
    note = f"; validation shard(s) opened at setup, before the first training line: {', '.join(setup[:3])}" if setup else ""
    return Check(rule, Verdict.PASS, f"no validation shard opened during training (watched: {touches.get('files_total', 0)} files, "
                 f"{_training(touches)}){note}", 0, 0)


def _remote(address: str) -> bool:
    """Local IPC over a unix socket or to a loopback address (torchrun's rendezvous, NCCL) is not the network."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return not (address.startswith("/") or host in {"localhost", "::1", ""} or host.startswith("127."))


def check_no_network_in_eval(touches: Mapping[str, Any] | None) -> Check:
    """A network connection during evaluation (once the training-end line is written) fails:
    the score must come from the artifact alone."""
    if (missing := _unwatched(NO_NETWORK_IN_EVAL, touches)) is not None:
        return missing
    assert touches is not None
    if not touches.get("train_end"):
        return _missing(NO_NETWORK_IN_EVAL, "a training-end line in its log, so evaluation cannot be told apart")
    bad = [c for c in touches.get("connections") or () if c.get("phase") == "eval" and _remote(str(c.get("address", "")))]
    if bad:
        first = bad[0]
        return Check(NO_NETWORK_IN_EVAL, Verdict.FAIL, f"connected to {first['address']} during evaluation at "
                     f"{_when(touches, float(first['t']))}, after the training-end log line {touches['train_end']['line_no']}"
                     + (f" ({len(bad)} such connections)" if len(bad) > 1 else ""), len(bad), 0)
    local = sum(1 for c in touches.get("connections") or () if c.get("phase") == "eval")
    note = f" ({local} local connection(s), loopback or unix socket, are not the network)" if local else ""
    return Check(NO_NETWORK_IN_EVAL, Verdict.PASS, f"no network connection during evaluation{note}", 0, 0)
