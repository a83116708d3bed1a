"""Response bodies of the results API: groups, comparisons, the leaderboard (pydantic v2)."""

from __future__ import annotations

from dataclasses import asdict, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, computed_field, model_serializer
from pydantic.dataclasses import dataclass as body_dataclass

from service.results.groups import Eligibility, SeedRow
from service.results.queries import GroupReport, LeaderboardRow, seed_row
from service.results.rules import Check, RuleSummary
from service.results.statistics import Comparison, Summary, finite_or_none as _finite
from service.results.views import GroupView
from service.runs.scripts.spec import shared_config


def _figures(dc: Any) -> dict[str, Any]:
    """A statistics dataclass's fields, every float made JSON-safe (see finite_or_none)."""
    return {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(dc).items()}


# The domain's Summary, Check and RuleSummary declare their fields once (their API descriptions
# too, as field metadata); each body is its class, its floats made JSON-safe where figures are.
@body_dataclass(frozen=True)
class SummaryOut(Summary):
    @classmethod
    def of(cls, s: Summary) -> "SummaryOut":
        return cls(**_figures(s))


@body_dataclass(frozen=True)
class CheckOut(Check):
    @classmethod
    def of(cls, c: Check) -> "CheckOut":
        return cls(**asdict(c))


@body_dataclass(frozen=True)
class RuleSummaryOut(RuleSummary):
    @classmethod
    def of(cls, r: RuleSummary) -> "RuleSummaryOut":
        return cls(**asdict(r))


# The domain's SeedRow declares a seed's fields once (what the API leaves out marked in its
# metadata); the body adds why a run does not count, and shows two of the row's properties
# under the names the API has always used.
@body_dataclass(frozen=True, config=ConfigDict(json_schema_serialization_defaults_required=True))  # every key is always there
class SeedOut(SeedRow):
    checks: tuple[CheckOut, ...] = ()  # each the API's CheckOut (the schema's name for a check)
    note: str = field(default="", metadata={"description": "why the run does not count toward n, when it does not"})
    counted = computed_field(SeedRow.counts)
    checks_verdict = computed_field(SeedRow.verdict)

    @classmethod
    def of(cls, row: SeedRow, note: str = "") -> "SeedOut":
        # floats made JSON-safe; counted then reads the same (a counted NaN score never gets here: summarise refuses it)
        return cls(**_figures(row), note=note)

    @model_serializer(mode="wrap")
    def _in_api_order(self, handler: SerializerFunctionWrapHandler):  # no return type: the schema stays the fields'
        """The keys in the order the API has always given them: each property beside the fields it reads."""
        d = handler(self)
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k not in _BESIDE.values():
                out[k] = v
                if k in _BESIDE and _BESIDE[k] in d:
                    out[_BESIDE[k]] = d[_BESIDE[k]]
        return out


_BESIDE = {"status": "counted", "steps": "checks_verdict"}  # a computed key, after this field


# The domain's Comparison declares its figures once (their API descriptions too, as field
# metadata); the body adds the two groups it compared.
@body_dataclass(frozen=True, kw_only=True)
class ComparisonOut(Comparison):
    """Is the candidate group's mean loss lower than the baseline's by more than `margin`?"""

    candidate: str
    baseline: str
    baseline_name: str

    @classmethod
    def of(cls, c: Comparison, candidate: GroupView, baseline: GroupView) -> "ComparisonOut":
        return cls(candidate=candidate.group.key, baseline=baseline.group.key, baseline_name=baseline.group.name, **_figures(c))


class EligibilityOut(BaseModel):
    eligible: bool
    reasons: list[str]

    @classmethod
    def of(cls, e: Eligibility) -> "EligibilityOut":
        return cls(eligible=e.eligible, reasons=list(e.reasons))


class GroupOut(BaseModel):
    """One group's figures over its counted seeds."""

    key: str
    name: str
    team: str
    track: str
    hardware: str
    kind: str = Field(description="trainer (a config of the shared trainer) or script (a team's own train_gpt.py)")
    config: dict
    diff: str = Field(description="the config's difference from the default stack, one line; for a script, its sha256, data and env")
    allow_noncompliant: bool
    published: bool
    published_at: datetime | None
    created_at: datetime
    n: int = Field(description="succeeded runs with a score; failed, cancelled and unfinished runs do not count")
    runs_total: int
    not_counted: int
    val_bpb: SummaryOut
    val_loss: SummaryOut
    best_seed: int | None
    worst_seed: int | None
    mean_artifact_bytes: float | None
    max_artifact_bytes: int | None
    mean_train_seconds: float | None
    mean_eval_seconds: float | None
    checks_verdict: str
    checks: list[RuleSummaryOut]

    @classmethod
    def of(cls, v: GroupView) -> "GroupOut":
        g, s = v.group, v.stats
        return cls(
            key=g.key, name=g.name, team=g.team.name, track=g.track, hardware=g.hardware, kind=g.kind, config=shared_config(g.kind, g.config), diff=v.diff,
            allow_noncompliant=g.allow_noncompliant, published=g.published_at is not None, published_at=g.published_at,
            created_at=g.created_at, n=s.n, runs_total=v.runs_total, not_counted=len(s.excluded),
            val_bpb=SummaryOut.of(s.val_bpb), val_loss=SummaryOut.of(s.val_loss),
            best_seed=s.best.seed if s.best else None, worst_seed=s.worst.seed if s.worst else None,
            mean_artifact_bytes=s.mean_artifact_bytes, max_artifact_bytes=s.max_artifact_bytes,
            mean_train_seconds=s.mean_train_seconds, mean_eval_seconds=s.mean_eval_seconds,
            checks_verdict=s.verdict.value, checks=[RuleSummaryOut.of(r) for r in s.rules],
        )


class GroupDetail(GroupOut):
    seeds: list[SeedOut]
    baseline: GroupOut | None
    comparison: ComparisonOut | None
    eligibility: EligibilityOut

    @classmethod
    def of_report(cls, r: GroupReport) -> "GroupDetail":
        v = r.view
        notes = {e.run_id: e.reason for e in v.stats.excluded}
        rows = sorted(list(v.stats.counted) + [_row(v, e.run_id) for e in v.stats.excluded], key=lambda x: x.run_id)
        return cls(
            **GroupOut.of(v).model_dump(),
            seeds=[SeedOut.of(row, notes.get(row.run_id, "")) for row in rows],
            baseline=GroupOut.of(r.baseline) if r.baseline else None,
            comparison=ComparisonOut.of(r.comparison, v, r.baseline) if r.comparison and r.baseline else None,
            eligibility=EligibilityOut.of(r.eligibility),
        )


def _row(view: GroupView, run_id: int) -> SeedRow:
    return seed_row(next(run for run in view.runs if run.id == run_id))


class LeaderboardEntry(BaseModel):
    rank: int
    group: GroupOut
    p_value: float | None = Field(description="against the team's previous best (see comparison)")
    comparison: str = Field(description="one line: improvement, CI and p-value, or why there is none")
    eligible: bool
    eligibility: list[str]

    @classmethod
    def of(cls, row: LeaderboardRow) -> "LeaderboardEntry":
        r = row.report
        comp = r.comparison
        return cls(rank=row.rank, group=GroupOut.of(r.view), p_value=_finite(comp.p_value) if comp else None,
                   comparison=comp.message if comp else "no baseline group on this track", eligible=r.eligibility.eligible,
                   eligibility=list(r.eligibility.reasons))


class Leaderboard(BaseModel):
    track: str
    hardware: str | None
    entries: list[LeaderboardEntry]
