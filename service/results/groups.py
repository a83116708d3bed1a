"""A group's figures over its seeds (pure: rows in, figures out).

A group is one team's runs of one normalised config (seed excluded) on one
track and hardware. Only SUCCEEDED runs with a val_bpb and a val_loss count
toward n; every other run is listed with why it does not count (failed,
cancelled, still queued or running).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.core.status import TERMINAL_VALUES, RunStatus
from service.results.rules import Check, RuleSummary, Verdict, overall, summarise_group
from service.results.statistics import Comparison, Summary, summarise

SUCCEEDED = RunStatus.SUCCEEDED.value
FINISHED_BADLY = tuple(s for s in TERMINAL_VALUES if s != SUCCEEDED)


# What the results need of a run but a seed's API body (service.results.schemas.SeedOut, this class) leaves out.
_NOT_SHOWN = {"exclude": True}


@dataclass(frozen=True)
class SeedRow:
    """One run of a group, as the results need it (the API's body of it, service.results.schemas.SeedOut, is this class)."""

    run_id: int
    seed: int
    status: str
    status_reason: str = field(default="", metadata=_NOT_SHOWN)
    val_bpb: float | None = None
    val_loss: float | None = None
    pre_ttt_bpb: float | None = None
    artifact_bytes: int | None = None
    code_bytes: int | None = field(default=None, metadata=_NOT_SHOWN)
    model_bytes: int | None = field(default=None, metadata=_NOT_SHOWN)
    train_seconds: float | None = None
    eval_seconds: float | None = None
    steps: int | None = None
    finished_at: datetime | None = field(default=None, metadata=_NOT_SHOWN)
    checks: tuple[Check, ...] = ()

    @property
    def counts(self) -> bool:
        return self.status == SUCCEEDED and self.val_bpb is not None and self.val_loss is not None

    @property
    def verdict(self) -> Verdict:
        return overall(self.checks)


@dataclass(frozen=True)
class Excluded:
    run_id: int
    seed: int
    status: str
    reason: str


@dataclass(frozen=True)
class GroupStats:
    n: int
    val_bpb: Summary
    val_loss: Summary
    best: SeedRow | None  # lowest val_bpb among the counted runs
    worst: SeedRow | None
    mean_artifact_bytes: float | None
    max_artifact_bytes: int | None
    mean_train_seconds: float | None
    mean_eval_seconds: float | None
    counted: tuple[SeedRow, ...]
    excluded: tuple[Excluded, ...]
    rules: tuple[RuleSummary, ...]
    verdict: Verdict  # of the rules over the counted runs


def _mean(values: Sequence[float | int | None]) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _why_excluded(row: SeedRow) -> str:
    if row.status in FINISHED_BADLY:
        return f"{row.status.lower()}" + (f": {row.status_reason}" if row.status_reason else "") + "; not counted"
    if row.status == SUCCEEDED:
        return "succeeded without a val_bpb/val_loss; not counted"
    return f"{row.status.lower()}; not counted until it succeeds"


def aggregate(rows: Sequence[SeedRow]) -> GroupStats:
    """n, mean and sample std of val_bpb and val_loss, best and worst seed, mean bytes
    and seconds, and the rule checks summarised, over the runs that count."""
    counted = tuple(sorted((r for r in rows if r.counts), key=lambda r: (r.val_bpb, r.seed)))
    excluded = tuple(Excluded(r.run_id, r.seed, r.status, _why_excluded(r)) for r in sorted(rows, key=lambda r: r.run_id) if not r.counts)
    rules = tuple(summarise_group([r.checks for r in counted]))
    sizes = [r.artifact_bytes for r in counted if r.artifact_bytes is not None]
    return GroupStats(
        n=len(counted),
        val_bpb=summarise([r.val_bpb for r in counted if r.val_bpb is not None]),  # a counted run has both figures
        val_loss=summarise([r.val_loss for r in counted if r.val_loss is not None]),
        best=counted[0] if counted else None,
        worst=counted[-1] if counted else None,
        mean_artifact_bytes=_mean(sizes),
        max_artifact_bytes=max(sizes) if sizes else None,
        mean_train_seconds=_mean([r.train_seconds for r in counted]),
        mean_eval_seconds=_mean([r.eval_seconds for r in counted]),
        counted=counted,
        excluded=excluded,
        rules=rules,
        verdict=overall(c for r in counted for c in r.checks) if counted else Verdict.NOT_COMPARABLE,
    )


def config_diff(config: Mapping[str, Any]) -> str:
    """The config's difference from the default stack in one line: ``XSA_LAST_N=11 BIGRAM_VOCAB_SIZE=3072``.

    ``config`` holds only non-default knobs (the normal form), so this is its items
    in a stable order; the default stack itself reads ``default stack``.
    """
    if not config:
        return "default stack"
    return " ".join(f"{k}={_show(v)}" for k, v in sorted(config.items()))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Eligibility:
    """Record-eligible: at p < 0.01 against the baseline, with every check passing."""

    eligible: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)  # why not, one line each


def rule_blockers(stats: GroupStats, allow_noncompliant: bool) -> list[str]:
    """Why the group is not record-eligible, significance aside: allow_noncompliant, no succeeded run, rule checks."""
    reasons = []
    if allow_noncompliant:
        reasons.append("the spec set allow_noncompliant")
    if stats.n == 0:
        reasons.append("no run has succeeded yet")
    elif stats.verdict is Verdict.FAIL:
        failed = [r.rule for r in stats.rules if r.verdict is Verdict.FAIL]
        reasons.append(f"checks failed: {', '.join(failed)}")
    elif stats.verdict is Verdict.NOT_COMPARABLE:
        unsure = [r.rule for r in stats.rules if r.verdict is Verdict.NOT_COMPARABLE]
        reasons.append(f"checks not comparable: {', '.join(unsure)}")
    return reasons


def eligibility(stats: GroupStats, comparison: Comparison | None, allow_noncompliant: bool) -> Eligibility:
    reasons = rule_blockers(stats, allow_noncompliant)
    if comparison is None:
        reasons.append("no baseline group to compare against")
    elif not comparison.significant:
        reasons.append(comparison.message)
    return Eligibility(not reasons, tuple(reasons))
