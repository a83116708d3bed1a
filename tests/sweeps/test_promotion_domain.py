"""Promotion's decision (service.sweeps.promotion.decide), pure: the promoted group's seeds against its
baseline's under the leaderboard's test, the policy, the seeds run and the budget left."""

from __future__ import annotations

from service.sweeps.promotion import BETTER, BUDGET, NO_VERDICT, NOT_BETTER, TESTING, PromotionFacts, PromotionPolicy, decide, headline, projected_extra

RATIO = 2.4  # val_loss / val_bpb (nats per token over bits per byte) of both sides: the 0.005-nat margin is 0.0021 bpb
POLICY = PromotionPolicy(min_seeds=3, max_seeds=8, step=2)
BASE = [1.300, 1.301, 1.299]


def seeds(*bpbs: float) -> list[tuple[float, float]]:
    return [(b, RATIO * b) for b in bpbs]


def facts(candidate: list[float], baseline: list[float] | None = BASE, *, run: int | None = None, left: float | None = None,
          **over: object) -> PromotionFacts:  # fmt: skip
    return PromotionFacts(candidate=seeds(*candidate), baseline=None if baseline is None else seeds(*baseline),
                          seeds_run=len(candidate) if run is None else run, budget_left_gpu_hours=left, seed_gpu_hours=1.5, **over)  # type: ignore[arg-type]


def test_a_clearly_better_group_runs_to_min_seeds_then_is_better_and_record_eligible() -> None:
    first = decide(facts([1.100]), POLICY)
    assert (first.verdict, first.seeds) == (TESTING, 2) and "1 of min_seeds 3 succeeded" in first.why
    assert first.record_eligible is None  # no check in the way, the test not over
    done = decide(facts([1.100, 1.102, 1.099]), POLICY)
    assert done.verdict == BETTER and done.comparison is not None and done.comparison.p_value is not None and done.comparison.p_value < 0.01
    figures = done.to_json()
    assert figures["verdict"] == "better" and figures["n_candidate"] == 3 and figures["improvement"] > figures["margin"] > 0  # type: ignore[operator]
    assert done.record_eligible is True and figures["record_eligible"] is True
    assert headline(figures) == f"better at p = {done.comparison.p_value:.3g} < 0.01 over 3 seeds (baseline 3)"


def test_off_the_record_track_and_hardware_the_test_still_runs_to_its_verdict() -> None:
    """The unlimited track, or 1x H100, or the CPU: the time rules are not comparable there, so no group is a record,
    but the test between two groups of that same track and hardware is valid and runs to its end."""
    off = ["checks not comparable: train_time, eval_time"]
    first = decide(facts([1.100], blockers=off), POLICY)
    assert (first.verdict, first.seeds) == (TESTING, 2) and first.record_eligible is False  # seeds are spent on the test all the same
    assert first.record_why == ("not record-eligible: checks not comparable: train_time, eval_time "
                                "(records are judged on the 10min_16mb track's rules on 8x H100)")  # fmt: skip
    done = decide(facts([1.100, 1.102, 1.099], blockers=off), POLICY)
    assert done.verdict == BETTER and done.record_eligible is False and "train_time" in done.record_why
    worse = decide(facts([1.300, 1.298, 1.303], blockers=["checks failed: artifact_bytes"]), POLICY)
    assert worse.verdict == NOT_BETTER and worse.record_why == "not record-eligible: checks failed: artifact_bytes"
    plain = decide(facts([1.300, 1.298, 1.303]), POLICY)
    assert plain.record_eligible is False and plain.record_why == "not record-eligible: the test did not find it better"


def test_a_group_no_better_than_the_baseline_stops_not_eligible() -> None:
    step = decide(facts([1.300, 1.298, 1.303]), POLICY)
    assert step.verdict == NOT_BETTER and "no number of seeds makes this significant" in step.why
    # Better, but by less than the margin (0.0021 bpb): never, whatever the seeds.
    assert decide(facts([1.2995, 1.2985, 1.2990]), POLICY).verdict == NOT_BETTER


def test_a_close_group_gets_more_seeds_a_step_at_a_time_until_max_seeds() -> None:
    base = [1.300, 1.302, 1.298, 1.301, 1.299, 1.300, 1.3005, 1.2995]  # eight seeds: the baseline's spread bounds p less
    close = [1.2935, 1.2975, 1.2955]  # 0.0045 bpb better, twice the baseline's spread: p = 0.08 now, about 5 more seeds
    step = decide(facts(close, base), POLICY)
    assert (step.verdict, step.seeds) == (TESTING, 2) and "about 5 more seed(s) would reach p < 0.01" in step.why, step.why
    assert decide(facts(close, base), PromotionPolicy(min_seeds=3, max_seeds=6, step=2)).verdict == NOT_BETTER  # 5 more do not fit
    # Three seeds against three: the baseline's own three seeds keep p >= 0.01 whatever the candidate runs.
    bounded = decide(facts([1.2945, 1.2965, 1.2955]), POLICY)
    assert bounded.verdict == NOT_BETTER and "even 8 seeds would give p = 0.0137" in bounded.why, bounded.why
    assert headline(bounded.to_json()) == "not better at p = 0.0208 >= 0.01 over 3 seeds (baseline 3)"
    failed = decide(facts([1.10, 1.10], run=8), POLICY)  # eight run, two succeeded: max_seeds ends it
    assert failed.verdict == NOT_BETTER and "max_seeds (8) run, 2 succeeded" in failed.why


def test_the_budget_ends_it_or_trims_the_round() -> None:
    assert decide(facts([1.100], left=1.0), POLICY).verdict == BUDGET  # a seed may use 1.5
    trimmed = decide(facts([1.100], left=2.0), POLICY)
    assert (trimmed.verdict, trimmed.seeds) == (TESTING, 1)
    assert decide(facts([1.100, 1.102, 1.099], left=0.0), POLICY).verdict == BETTER  # a verdict needs no more seeds


def test_no_valid_comparison_stops_at_once_without_a_verdict() -> None:
    assert "no baseline" in decide(facts([1.1], baseline=None), POLICY).why
    one = decide(facts([1.1], baseline=[1.3]), POLICY)
    assert one.verdict == NO_VERDICT and "the baseline has 1 succeeded seed" in one.why
    flagged = decide(facts([1.1], flags=["hardware H100:8 against H100:1"]), POLICY)
    assert flagged.verdict == NO_VERDICT and "not comparable: hardware" in flagged.why and flagged.record_eligible is False
    assert headline(flagged.to_json()) == "no verdict"
    val = decide(facts([1.1], flags=["validation set 4,096 tokens against the full split"]), POLICY)
    assert val.verdict == NO_VERDICT and "validation set" in val.why


def test_the_projection_is_welchs_test_on_the_grown_group() -> None:
    """At k more seeds, the projected p is compare_policy's p for a group of n + k seeds with the observed mean and spread."""
    import statistics

    from service.results.statistics import compare_policy

    base = seeds(1.300, 1.302, 1.298, 1.301, 1.299, 1.300, 1.3005, 1.2995)
    cand = seeds(1.2935, 1.2975, 1.2955)
    comp = compare_policy(cand, base)
    extra, p = projected_extra(cand, base, comp, 20)
    assert extra == 5 and p is not None and p < 0.01
    bpbs = [b for b, _ in cand]
    mean, sd, n = statistics.fmean(bpbs), statistics.stdev(bpbs), len(bpbs) + extra
    z = [(i - (n - 1) / 2) for i in range(n)]
    grown = [mean + sd * x / statistics.stdev(z) for x in z]
    assert abs(compare_policy(seeds(*grown), base).p_value - p) < 1e-9  # type: ignore[operator]
    assert projected_extra(cand, base, comp, 4)[0] is None and projected_extra(cand, base, comp, 0) == (None, None)
