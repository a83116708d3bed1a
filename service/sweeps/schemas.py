"""Request and response bodies of the sweep endpoints (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.core.bodies import NAME_MAX_CHARS, NOTES_MAX_CHARS, Handle, NoteText, PlainText, Seed, Strict
from service.runs.schemas import ScriptEnvironment, ScriptFileUpload

MAX_TRIALS = 1000
MAX_PARALLEL = 64


class PruneSpec(Strict):
    """When to stop a trial early: the curve pruner (service.sweeps.plan.judge_prune) stops one whose predicted final val_bpb
    is worse than the best trial's; the median pruner (service.sweeps.pruners) one whose train loss trails the median."""

    enabled: bool = True
    # Default from bench/results/sweeps.md: at 0.005 and 0.95 no simulated sweep lost its best trial.
    margin: float = Field(0.005, ge=0, le=1, description="bpb a trial may be predicted behind the best trial before it is pruned")
    confidence: float = Field(0.95, ge=0.5, le=0.999, description="one-sided probability, under the predictor's prediction interval, "
                                                                  "that the trial ends worse than best + margin")
    min_step: int = Field(500, ge=1, le=1_000_000, description="no pruning before this training step")
    startup_trials: int = Field(3, ge=1, le=100, description="pruner median only: complete trials before any trial is pruned")


class PromoteSpec(Strict):
    """Once the search is over, the best trials run more seeds, into their own run groups, round by round, until the
    significance test the leaderboard uses says better or not, or max_seeds or the budget ends it; record eligibility
    (the test and every rule check) is said beside it (service.sweeps.promotion)."""

    top: int = Field(1, ge=1, le=10, description="how many of the best complete trials")
    seeds: list[Seed] = Field(default_factory=list, max_length=64, description="the more seeds, in the order they are used (unique, none of "
                                                                               "the trials' own); after them the smallest unused integers")
    min_seeds: int = Field(3, ge=2, le=64, description="succeeded seeds of the promoted group before the test's verdict")
    max_seeds: int = Field(8, ge=2, le=64, description="seeds the promoted group may run in all (failed ones count)")
    step: int = Field(2, ge=1, le=16, description="seeds added in one round at most, once min_seeds have succeeded")
    policy: Literal["readme", "maintainers", "systems_only"] = Field("readme", description="the significance policy, as caddie compare's")
    baseline: str | None = Field(None, max_length=200, description="a group key, record:<folder> or leader; default: the group's own "
                                                                   "(the track's public record, else the team's leader)")
    reserve_gpu_hours: float = Field(0.0, ge=0, le=1e6, description="of budget_gpu_hours, kept for promotion: the search stops short of it")


class PromotionOut(BaseModel):
    """Where a promoted trial's group stands: seeds run, the test against its baseline, its verdict, and apart from it
    whether the group is record-eligible."""

    trial: int
    verdict: str = Field(description="the test's: testing, better, not_better, no_verdict (no valid comparison) or budget; "
                                     "not_eligible in sweeps promoted before the test and record eligibility were told apart")
    headline: str = Field("", description="the verdict in one phrase: 'better at p = 0.0034 < 0.01 over 3 seeds (baseline 3)'")
    why: str
    record_eligible: bool | None = Field(None, description="better and every rule check passing (the time rules: the 10min_16mb "
                                                           "track on 8x H100); null while the test runs and no check stands in the way")
    record_why: str = ""
    rounds: int = Field(description="rounds of more seeds submitted")
    group_key: str | None
    seeds: list[int] = Field(default_factory=list, description="the group's seeds, as last judged")
    succeeded: int | None = Field(None, description="its succeeded seeds, as last judged")
    val_bpb: float | None = Field(None, description="their mean")
    p_value: float | None = None
    improvement: float | None = Field(None, description="baseline minus candidate mean, in unit")
    margin: float | None = None
    alpha: float | None = None
    unit: str | None = None
    baseline: dict[str, str] | None = Field(None, description="key and name of the baseline group")


class SweepCreate(Strict):
    """A sweep: a base (the shared trainer's knobs, or a team's own train_gpt.py with its files, env and data), a search
    space, a strategy and limits. With a script the space names env variables of the script."""

    name: PlainText = Field(min_length=1, max_length=NAME_MAX_CHARS)
    notes: NoteText = Field("", max_length=NOTES_MAX_CHARS)
    team: Handle | None = Field(None, description="team name; default: the caller's only team")
    track: str = Field(description="10min_16mb or unlimited (those of CADDIE_ALLOWED_TRACKS)")
    hardware: str = Field(description="e.g. H100:8 (one of CADDIE_ALLOWED_HARDWARE)")
    priority: int | None = Field(None, description="of every trial's runs; higher runs first within a team")
    base: dict[str, Any] = Field(default_factory=dict, description="shared-trainer knobs every trial shares, keyed by env name")
    script: str | None = Field(None, description="a script sweep: the team's own challenge-format train_gpt.py, base64, as a script run's "
                                                 "(instead of base); every trial runs it with env = {**env, **the trial's values}")
    files: list[ScriptFileUpload] = Field(default_factory=list, description="script sweeps: extra files beside train_gpt.py")
    env: dict[str, str | int | float | bool] = Field(default_factory=dict, description="script sweeps: env every trial shares (NAME: value)")
    data: str | None = Field(None, description="script sweeps: the data variant, e.g. sp1024 (default sp1024)")
    environment: ScriptEnvironment | None = Field(None, description="script sweeps: the Python environment train_gpt.py runs in")
    space: dict[str, dict[str, Any]] = Field(description="knob (a script sweep: env variable): {values: [...]} or "
                                                         "{low: L, high: H, log: bool, steps: N (grid)}")
    strategy: Literal["grid", "random", "tpe"] = "tpe"
    seeds: list[Seed] = Field(default_factory=lambda: [1337], description="seeds of every trial (one run each)")
    max_trials: int = Field(20, ge=1, le=MAX_TRIALS)
    max_parallel: int = Field(2, ge=1, le=MAX_PARALLEL, description="trials at once")
    budget_gpu_hours: float | None = Field(None, gt=0, le=1e6, description="GPU-hours the sweep may spend or commit (runs' expected time)")
    prune: PruneSpec | None = Field(default_factory=PruneSpec, description="null: never prune")
    pruner: Literal["curve", "median", "none"] = Field("curve", description="curve: caddie's predicted final val_bpb against the best trial's "
                                                     "(prune's margin and confidence); median: Optuna's MedianPruner on the train loss "
                                                     "(prune's min_step and startup_trials); none: never prune. A script sweep's "
                                                     "trials are judged on the script's own log: median on its train_loss lines (any "
                                                     "script), curve also on its final val_loss/val_bpb, fitted at the records' steps")
    sampler_seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the random and TPE proposals")
    promote: PromoteSpec | None = Field(None, description="null: no promotion; else the best trials' groups get these seeds too")


class TrialOut(BaseModel):
    number: int
    status: str = Field(description="pending, running, complete, failed, pruned or stopped")
    params: dict[str, Any]
    value: float | None = Field(description="complete: mean val_bpb of its SUCCEEDED runs; pruned: the predicted final val_bpb")
    reason: str
    prune: dict[str, Any] | None = Field(description="a pruned trial's figures: step, predicted_bpb, se, best_bpb, probability, ...")
    run_ids: list[int]
    group_key: str | None
    gpu_hours: float | None
    saved_gpu_hours: float | None
    created_at: datetime
    finished_at: datetime | None


class SweepOut(BaseModel):
    id: int
    team: str
    user: str
    name: str
    notes: str
    track: str
    hardware: str
    strategy: str
    status: str = Field(description="running, stopped or done")
    status_reason: str
    spec: dict[str, Any]
    counts: dict[str, int] = Field(description="trials by status")
    best: TrialOut | None
    gpu_hours_used: float = Field(description="by its ended trials' runs")
    gpu_hours_saved: float = Field(description="by pruning: what pruned trials' runs would still have used")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    trials: list[TrialOut] | None = Field(None, description="GET /sweeps/{id} only")
    promotion: list[PromotionOut] = Field(default_factory=list, description="each promoted trial's group, best first")
    result: PromotionOut | None = Field(None, description="the sweep's result: the best promoted group that is record-eligible, "
                                                          "else the best found better, else the best promoted one")
    importance: dict[str, float] | None = Field(None, description="GET /sweeps/{id} only: each knob's share of "
                                                                  "how the best trials differ from the rest (Optuna's PED-ANOVA), from 3 valued trials on")


class SweepPage(BaseModel):
    items: list[SweepOut]
    next_cursor: str | None = None  # the cursor of the next page; None on the last
