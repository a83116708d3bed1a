"""Promotion: a sweep's best trials re-run on more seeds until the significance test decides (pure;
service.sweeps.store applies each step on the sweep tick).

A trial found by a search has the sweep's few seeds and was picked as the lowest of many, so its
figure is optimistic. Promotion runs its config on more seeds, into the same run group, a few at a
time; after each round it asks the test the leaderboard and ``caddie compare`` ask
(service.results.statistics.compare_policy: one-sided Welch in nats per byte, the README's 0.005
nats at p < 0.01 by default), against the group's default baseline (the current public record of
its track, or the team's leader), and ``decide`` says what next. Two questions, answered apart:

1. Is the config better than the baseline? Asked wherever the comparison is valid (same track,
   hardware and validation set; a baseline that reports val_loss, so the per-token margin has a
   per-byte value), on any hardware and track: a team sweeping on 1x H100 or the CPU wants this.

    stop  better        min_seeds or more have succeeded and the test is significant
    stop  not_better    once min_seeds have succeeded, the test says never (the improvement is not
                        above the margin) or, at the observed means and spreads, even max_seeds
                        would leave p >= alpha; or max_seeds have run
    stop  no_verdict    what more seeds cannot change: no baseline, a baseline of one seed, groups
                        not comparable
    stop  budget        not one more seed fits in the sweep's GPU-hour budget
    run   k seeds       up to min_seeds first; then as many as the projection says are needed,
                        at most ``step`` a round, within max_seeds and the budget

2. Is it record-eligible? Better, and every rule check passes (``blockers`` is empty): the time
   rules are rules of the 10min_16mb track judged on 8x H100 only, so elsewhere the answer is no,
   with the reason, while question 1 still runs to its verdict.

Looking again after each round raises the chance that a candidate no better than the baseline by
the margin is called better above alpha (bench/sweeps_promotion.py measures how much); min_seeds,
step and max_seeds bound how often it looks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.results.statistics import DEFAULT_POLICY, Comparison, compare_policy, nats_per_byte, summarise

TESTING, BETTER, NOT_BETTER, NO_VERDICT, BUDGET = "testing", "better", "not_better", "no_verdict", "budget"
VERDICTS = (TESTING, BETTER, NOT_BETTER, NO_VERDICT, BUDGET)
# Where a record's time rules are judged (service.results.rules): said beside a "not comparable" blocker.
RECORD_RULES_NOTE = "records are judged on the 10min_16mb track's rules on 8x H100"


@dataclass(frozen=True)
class PromotionPolicy:
    significance: str = DEFAULT_POLICY  # a policy of service.results.statistics.POLICIES
    min_seeds: int = 3  # succeeded seeds before any verdict of the test (the challenge's submissions show 3)
    max_seeds: int = 8  # seeds the promoted group may run in all, failed ones included
    step: int = 2  # seeds added in one round at most, after min_seeds


@dataclass(frozen=True)
class PromotionFacts:
    candidate: Sequence[tuple[float, float]]  # (val_bpb, val_loss) of each succeeded seed of the promoted group
    baseline: Sequence[tuple[float, float]] | None  # the baseline's, None: there is none
    seeds_run: int  # seeds the group has run, succeeded or not
    budget_left_gpu_hours: float | None  # None: the sweep has no budget
    seed_gpu_hours: float  # what one more seed may use
    flags: Sequence[str] = ()  # why the groups are not comparable (service.results.queries.comparable_flags)
    blockers: Sequence[str] = ()  # why the group is not record-eligible whatever the test says (a rule check not passing)


@dataclass(frozen=True)
class Step:
    verdict: str  # TESTING: run ``seeds`` more; else the test's end
    seeds: int
    why: str
    comparison: Comparison | None
    record_eligible: bool | None = None  # None: the test has not ended and no rule check stands in the way yet
    record_why: str = ""

    def to_json(self) -> dict[str, object]:
        c = self.comparison
        return {"verdict": self.verdict, "why": self.why, "p_value": c.p_value if c else None, "improvement": c.improvement if c else None,
                "margin": c.margin if c else None, "alpha": c.alpha if c else None, "unit": c.unit if c else None,
                "n_candidate": c.n_candidate if c else None, "n_baseline": c.n_baseline if c else None,
                "record_eligible": self.record_eligible, "record_why": self.record_why}  # fmt: skip


def decide(facts: PromotionFacts, policy: PromotionPolicy) -> Step:
    """What to do with a promoted group none of whose runs is still going (see the module doc)."""
    step = _test(facts, policy)
    eligible, why = record_status(step.verdict, facts.blockers)
    return replace(step, record_eligible=eligible, record_why=why)


def record_status(verdict: str, blockers: Sequence[str]) -> tuple[bool | None, str]:
    """Record eligibility beside the test's verdict: better and no blocker."""
    if blockers:
        note = f" ({RECORD_RULES_NOTE})" if any(b.startswith("checks not comparable") for b in blockers) else ""
        return False, f"not record-eligible: {'; '.join(blockers)}{note}"
    if verdict == BETTER:
        return True, "record-eligible: better than its baseline and every rule check passes"
    if verdict == TESTING:
        return None, "every rule check passes so far; record-eligible if the test says better"
    return False, "not record-eligible: the test did not find it better"


def _test(facts: PromotionFacts, policy: PromotionPolicy) -> Step:
    if facts.baseline is None:
        return Step(NO_VERDICT, 0, "no baseline to compare against (no public record of the track imported, no other group of the team)", None)
    comp = compare_policy(facts.candidate, facts.baseline, policy.significance, facts.flags)
    if comp.flags:
        return Step(NO_VERDICT, 0, comp.message, comp)
    if comp.n_baseline < 2:
        return Step(NO_VERDICT, 0, f"the baseline has {comp.n_baseline} succeeded seed(s): the test needs 2 on each side, "
                                   "and seeds of the candidate cannot change that (promote.baseline names another)", comp)  # fmt: skip
    room = policy.max_seeds - facts.seeds_run
    n = comp.n_candidate
    if n < policy.min_seeds:
        want, why = policy.min_seeds - n, f"{n} of min_seeds {policy.min_seeds} succeeded"
    elif comp.significant:
        return Step(BETTER, 0, comp.message, comp)
    elif comp.improvement is None or comp.improvement <= comp.margin:
        return Step(NOT_BETTER, 0, comp.message, comp)
    else:
        extra, p_at_max = projected_extra(facts.candidate, facts.baseline, comp, max(room, 0))
        if extra is None:
            shown = "" if p_at_max is None else f", even {policy.max_seeds} seeds would give p = {p_at_max:.3g} >= {comp.alpha:g}"
            return Step(NOT_BETTER, 0, f"at the observed spread{shown} (max_seeds): {comp.message}", comp)
        want, why = min(extra, policy.step), f"about {extra} more seed(s) would reach p < {comp.alpha:g} at the observed spread"
    want = min(want, room)
    if want <= 0:
        return Step(NOT_BETTER, 0, f"max_seeds ({policy.max_seeds}) run, {n} succeeded: {comp.message}", comp)
    if facts.budget_left_gpu_hours is not None and facts.seed_gpu_hours > 0:
        fits = math.floor(max(facts.budget_left_gpu_hours, 0.0) / facts.seed_gpu_hours + 1e-9)
        if fits < 1:
            return Step(BUDGET, 0, f"the sweep's GPU-hour budget has {max(facts.budget_left_gpu_hours, 0.0):.2f} left, a seed may use "
                                   f"{facts.seed_gpu_hours:.2f}: {comp.message}", comp)  # fmt: skip
        want = min(want, fits)
    return Step(TESTING, want, f"{want} more seed(s): {why}", comp)


def headline(state: Mapping[str, Any]) -> str:
    """A promoted group's verdict in one phrase, from its stored state (Step.to_json and the store's figures):
    'better at p = 0.0034 < 0.01 over 3 seeds (baseline 3)'; 'testing'; 'no verdict'."""
    verdict = str(state.get("verdict", TESTING))
    text = verdict.replace("_", " ")
    if verdict in (BETTER, NOT_BETTER, BUDGET) and state.get("p_value") is not None and state.get("alpha") is not None:
        sign = "<" if state["p_value"] < state["alpha"] else ">="
        text += f" at p = {state['p_value']:.3g} {sign} {state['alpha']:g} over {state.get('n_candidate')} seeds (baseline {state.get('n_baseline')})"
    return text


def projected_extra(candidate: Sequence[tuple[float, float]], baseline: Sequence[tuple[float, float]], comp: Comparison,
                    room: int) -> tuple[int | None, float | None]:  # fmt: skip
    """The fewest more candidate seeds (1..room) for which Welch's one-sided p falls below alpha, if the
    candidate's mean and spread stay as observed and the baseline stays as it is; and p at ``room`` more.

    Welch, as compare_policy: SE² = s_c²/n_c + s_b²/n_b, t = (improvement − margin)/SE, df by
    Welch–Satterthwaite, p = P(T_df >= t); in nats per byte, the comparison's unit. A baseline of few
    seeds bounds SE from below, so more seeds of the candidate alone may never get there."""
    from scipy import stats  # here, not at module level: it weighs ~90 MB in every process

    c = summarise([nats_per_byte(b) for b, _ in candidate])
    b = summarise([nats_per_byte(x) for x, _ in baseline])
    assert comp.improvement is not None and b.std is not None and c.n >= 1
    s_c = c.std if c.std is not None else b.std  # one seed: the baseline's spread stands in
    excess = comp.improvement - comp.margin
    p = None
    for k in range(1, room + 1):
        var_c, var_b = s_c**2 / (c.n + k), b.std**2 / b.n
        if var_c + var_b == 0:
            p = 0.0 if excess > 0 else 1.0
        else:
            df = (var_c + var_b) ** 2 / ((var_c**2 / (c.n + k - 1) if var_c else 0.0) + (var_b**2 / (b.n - 1) if var_b else 0.0))
            p = float(stats.t.sf(excess / math.sqrt(var_c + var_b), df))
        if p < comp.alpha:
            return k, p
    return None, p
