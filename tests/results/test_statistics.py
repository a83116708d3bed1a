"""service.results.statistics against values computed independently.

Nothing here calls scipy's t-test: the Welch t, the Welch–Satterthwaite df and
the standard error are computed by hand below with ``math`` only, and scipy is
used for nothing but the final tail probability (``scipy.stats.t.sf``). On top
of that, three published Welch examples are reproduced with their printed
figures (sources in the comments).
"""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
from scipy.stats import t as t_dist

from service.results.statistics import (
    ALPHA,
    MARGIN_NATS,
    POLICIES,
    Comparison,
    Summary,
    compare,
    compare_policy,
    nats_per_byte,
    seeds_needed,
    summarise,
)

# --------------------------------------------------------------------------- #
# Independent reference: Welch's test by hand
# --------------------------------------------------------------------------- #


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def _var(xs: list[float]) -> float:
    m = _mean(xs)
    return math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def hand_welch(candidate: list[float], baseline: list[float], margin: float = 0.0) -> dict[str, float]:
    """t = (x̄_b - x̄_c - m) / SE, SE = sqrt(s_c²/n_c + s_b²/n_b),
    df = (s_c²/n_c + s_b²/n_b)² / ((s_c²/n_c)²/(n_c-1) + (s_b²/n_b)²/(n_b-1)),
    one-sided p = P(T_df >= t)."""
    n_c, n_b = len(candidate), len(baseline)
    vc, vb = _var(candidate) / n_c, _var(baseline) / n_b
    se = math.sqrt(vc + vb)
    d = _mean(baseline) - _mean(candidate)
    t = (d - margin) / se
    df = (vc + vb) ** 2 / (vc**2 / (n_c - 1) + vb**2 / (n_b - 1))
    return {"d": d, "se": se, "t": t, "df": df, "p": float(t_dist.sf(t, df))}


def sample(mean: float, std: float, n: int) -> list[float]:
    """n evenly spaced values with exactly this mean and sample standard deviation."""
    base = [i - (n - 1) / 2 for i in range(n)]
    sd = math.sqrt(n * (n + 1) / 12)  # sample sd of 0, 1, ..., n-1
    return [mean + std * b / sd for b in base]


def equal_n_p(improvement: float, std: float, n: int, margin: float = MARGIN_NATS) -> float:
    """One-sided Welch p with n seeds a side, both with sample sd `std`: df = 2n - 2."""
    t = (improvement - margin) / (std * math.sqrt(2 / n))
    return float(t_dist.sf(t, 2 * n - 2))


def assert_no_nan(c: Comparison) -> None:
    for name, value in vars(c).items():
        if isinstance(value, float):
            assert math.isfinite(value), f"{name} = {value}"


# Realistic seeds: val_loss ~ 1.89, sample sd 0.0005 .. 0.001.
BASELINE = [1.8925, 1.8935, 1.8930]  # mean 1.8930, sd 0.0005
CANDIDATE = [1.8853, 1.8862, 1.8857]  # mean 1.88573, sd ~0.00045, improvement ~0.0073


# --------------------------------------------------------------------------- #
# summarise
# --------------------------------------------------------------------------- #


def test_summarise_by_hand() -> None:
    s = summarise([1.8850, 1.8860, 1.8855])
    assert s.n == 3
    assert s.mean == pytest.approx(1.8855, abs=1e-12)
    # deviations -0.0005, 0.0005, 0: sqrt((2.5e-7 + 2.5e-7) / 2) = 0.0005
    assert s.std == pytest.approx(0.0005, rel=1e-9)
    assert (s.min, s.max) == (1.8850, 1.8860)


def test_summarise_small_and_identical() -> None:
    assert summarise([]) == Summary(n=0, mean=None, std=None, min=None, max=None)
    assert summarise([1.89]) == Summary(n=1, mean=1.89, std=None, min=1.89, max=1.89)
    same = summarise([1.8912] * 4)
    assert same.std == 0.0 and same.mean == 1.8912  # exactly, no rounding noise


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_summarise_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match=repr(bad)):
        summarise([1.89, bad])


# --------------------------------------------------------------------------- #
# Welch t, df and one-sided p against the hand computation
# --------------------------------------------------------------------------- #


def test_welch_t_df_p_match_hand_computation_unequal_n_and_spread() -> None:
    candidate = [1.8841, 1.8862, 1.8850, 1.8879, 1.8858]  # n 5, sd ~0.0014
    baseline = [1.8931, 1.8934, 1.8929]  # n 3, sd ~0.00025
    h = hand_welch(candidate, baseline, MARGIN_NATS)
    c = compare(candidate, baseline)
    assert c.improvement == pytest.approx(h["d"], abs=1e-12)
    assert c.t == pytest.approx(h["t"], rel=1e-9)
    assert c.df == pytest.approx(h["df"], rel=1e-9)
    assert c.p_value == pytest.approx(h["p"], rel=1e-7)
    # Welch's df lies between min(n)-1 and n_c+n_b-2, and is not the pooled 6 here.
    assert 2 <= c.df <= 6 and abs(c.df - 6) > 0.5
    assert c.enough_seeds and c.n_candidate == 5 and c.n_baseline == 3


def test_welch_df_formula_equal_n_equal_spread_is_2n_minus_2() -> None:
    c = compare(sample(1.8860, 0.0008, 4), sample(1.8930, 0.0008, 4))
    assert c.df == pytest.approx(6.0, rel=1e-9)


def test_welch_df_formula_one_side_without_spread() -> None:
    # s_b = 0: df = (s_c²/n_c)² / ((s_c²/n_c)²/(n_c-1)) = n_c - 1
    candidate = sample(1.8860, 0.0008, 5)
    c = compare(candidate, [1.8930] * 3)
    assert c.df == pytest.approx(4.0, rel=1e-9)
    h = hand_welch(candidate, [1.8930] * 3, MARGIN_NATS)
    assert c.t == pytest.approx(h["t"], rel=1e-9)
    assert c.p_value == pytest.approx(h["p"], rel=1e-7)
    assert_no_nan(c)


def test_significant_result_and_message() -> None:
    h = hand_welch(CANDIDATE, BASELINE, MARGIN_NATS)
    c = compare(CANDIDATE, BASELINE)
    assert c.p_value == pytest.approx(h["p"], rel=1e-7)
    assert c.p_value < ALPHA and c.significant
    assert c.more_seeds_needed == 0
    assert c.margin == MARGIN_NATS and c.alpha == ALPHA and c.confidence == 0.95
    assert c.message.startswith(f"improvement {h['d']:.4f} nats (95% CI ")
    assert f"p = {h['p']:.4f} < 0.01: significant" in c.message


def test_worse_candidate_is_not_significant() -> None:
    c = compare(BASELINE, CANDIDATE)  # swapped: the candidate is the worse one
    assert c.improvement is not None and c.improvement < 0
    assert c.t is not None and c.t < 0
    assert c.p_value is not None and c.p_value > 0.99 and not c.significant
    assert c.more_seeds_needed is None
    assert "no number of seeds makes this significant" in c.message


# --------------------------------------------------------------------------- #
# Published examples
# --------------------------------------------------------------------------- #

# ClickHouse documentation, aggregate function welchTTest, "Basic Welch's t-test
# example" (https://clickhouse.com/docs/sql-reference/aggregate-functions/reference/welchttest):
# sample 0 = (20.3, 22.1, 21.9), sample 1 = (18.9, 20.3, 19)
#   welchTTest(...)     -> (t 2.7988719532211235, two-sided p 0.051807360348581945)
#   welchTTest(0.95)(...) -> CI of mean0 - mean1: -0.026294346671631885 .. 4.092961013338302
CH_0 = [20.3, 22.1, 21.9]
CH_1 = [18.9, 20.3, 19.0]

# R, t.test(ts1, ts2) (Welch is R's default), output as printed in a Cross
# Validated answer on Welch confidence intervals:
#   t = -1.8325, df = 17.9, p-value = 0.08356
#   95 percent confidence interval: -2.1469104 0.1469104 ; means 10.4 and 11.4
R_TS1 = [11, 9, 10, 11, 10, 12, 9, 11, 12, 9]
R_TS2 = [11, 13, 10, 13, 12, 9, 11, 12, 12, 11]

# Wikipedia, "Welch's t-test", section Examples (Welch columns, two-sided p,
# published to 2-3 significant figures):
#   example 1: t = -2.46, df = 25.0, p = 0.021
#   example 2: t = -1.57, df = 9.9,  p = 0.149
WIKI_1 = (
    [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4],
    [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4],
    -2.46, 25.0, 0.021,
)
WIKI_2 = (
    [17.2, 20.9, 22.6, 18.1, 21.7, 21.4, 23.5, 24.2, 14.7, 21.8],
    [21.5, 22.8, 21.0, 23.0, 21.6, 23.6, 22.5, 20.7, 23.4, 21.8,
     20.7, 21.7, 21.5, 22.5, 23.6, 21.5, 22.5, 23.5, 21.5, 21.8],
    -1.57, 9.9, 0.149,
)


def test_clickhouse_published_example_by_hand_and_by_compare() -> None:
    # By hand, t of mean0 - mean1 (= candidate CH_1 against baseline CH_0).
    h = hand_welch(CH_1, CH_0)
    assert h["t"] == pytest.approx(2.7988719532211235, rel=1e-9)
    assert 2 * h["p"] == pytest.approx(0.051807360348581945, rel=1e-6)
    # compare(): candidate = the lower group, margin 0 -> one-sided p = half the two-sided one.
    c = compare(CH_1, CH_0, margin=0.0, confidence=0.95)
    assert c.improvement == pytest.approx(_mean(CH_0) - _mean(CH_1), rel=1e-12)
    assert c.t == pytest.approx(2.7988719532211235, rel=1e-9)
    assert c.p_value == pytest.approx(0.051807360348581945 / 2, rel=1e-6)
    assert c.ci_low == pytest.approx(-0.026294346671631885, rel=1e-6)
    assert c.ci_high == pytest.approx(4.092961013338302, rel=1e-9)
    assert c.df == pytest.approx(h["df"], rel=1e-12)


def test_r_t_test_published_example() -> None:
    h = hand_welch(R_TS1, R_TS2)  # candidate ts1 (mean 10.4), baseline ts2 (11.4)
    assert h["d"] == pytest.approx(1.0)
    assert h["t"] == pytest.approx(1.8325, abs=5e-5)
    assert h["df"] == pytest.approx(17.9, abs=0.05)
    assert 2 * h["p"] == pytest.approx(0.08356, abs=5e-6)
    c = compare(R_TS1, R_TS2, margin=0.0)
    assert (c.mean_candidate, c.mean_baseline) == (pytest.approx(10.4), pytest.approx(11.4))
    assert c.t == pytest.approx(1.8325, abs=5e-5)
    assert c.df == pytest.approx(17.9, abs=0.05)
    assert c.p_value == pytest.approx(0.08356 / 2, abs=5e-6)
    # R's CI is of mean(ts1) - mean(ts2); the improvement is its mirror image.
    assert c.ci_low == pytest.approx(-0.1469104, abs=5e-7)
    assert c.ci_high == pytest.approx(2.1469104, abs=5e-7)


def test_margin_is_a_shift_of_the_baseline() -> None:
    # Testing improvement > 0.5 against a baseline raised by 0.5 is the published test again.
    c = compare(R_TS1, [x + 0.5 for x in R_TS2], margin=0.5)
    assert c.improvement == pytest.approx(1.5)
    assert c.t == pytest.approx(1.8325, abs=5e-5)
    assert c.p_value == pytest.approx(0.08356 / 2, abs=5e-6)


@pytest.mark.parametrize("example", [WIKI_1, WIKI_2], ids=["wikipedia-1", "wikipedia-2"])
def test_wikipedia_published_examples(example: tuple) -> None:
    a1, a2, t_pub, df_pub, p_pub = example
    h = hand_welch(a2, a1)  # t of mean(A1) - mean(A2)
    assert h["t"] == pytest.approx(t_pub, abs=0.005)
    assert h["df"] == pytest.approx(df_pub, abs=0.1)
    assert 2 * float(t_dist.sf(abs(h["t"]), h["df"])) == pytest.approx(p_pub, abs=0.0005)
    c = compare(a1, a2, margin=0.0)  # candidate A1 has the lower mean
    assert c.t == pytest.approx(-t_pub, abs=0.005)
    assert c.df == pytest.approx(df_pub, abs=0.1)
    assert 2 * c.p_value == pytest.approx(p_pub, abs=0.0005)


# --------------------------------------------------------------------------- #
# The 0.005-nat margin
# --------------------------------------------------------------------------- #


def test_same_data_significant_without_margin_and_not_with_it() -> None:
    candidate = sample(1.8870, 0.0005, 3)
    baseline = sample(1.8930, 0.0005, 3)  # improvement 0.0060
    h0 = hand_welch(candidate, baseline, 0.0)
    h5 = hand_welch(candidate, baseline, 0.005)
    assert h0["p"] < 1e-4 and 0.03 < h5["p"] < 0.04  # t 14.7 vs 2.45 on 4 df

    no_margin = compare(candidate, baseline, margin=0.0)
    assert no_margin.significant and no_margin.p_value == pytest.approx(h0["p"], rel=1e-6)

    challenge = compare(candidate, baseline)  # default margin is the challenge's 0.005
    assert challenge.margin == 0.005
    assert not challenge.significant
    assert challenge.p_value == pytest.approx(h5["p"], rel=1e-7)
    assert challenge.t == pytest.approx(h5["t"], rel=1e-9)
    assert challenge.improvement == pytest.approx(0.006, abs=1e-12)
    assert "not significant" in challenge.message


@pytest.mark.parametrize(
    ("improvement", "significant"),
    [(0.0056, True), (0.0054, True), (0.0053, False), (0.0047, False), (0.0044, False)],
)
def test_improvement_just_over_and_under_the_margin(improvement: float, significant: bool) -> None:
    # Tight seeds (sd 0.0001, 3 a side): SE = 0.0001 * sqrt(2/3) ~ 8.2e-5, df 4.
    # 0.0054: t = 4.9, p = 0.004; 0.0053: t = 3.67, p = 0.0107, over the margin but
    # not yet significant; 0.0047 and 0.0044: under the margin, never significant.
    candidate = sample(1.8890 - improvement, 0.0001, 3)
    baseline = sample(1.8890, 0.0001, 3)
    h = hand_welch(candidate, baseline, MARGIN_NATS)
    c = compare(candidate, baseline)
    assert c.p_value == pytest.approx(h["p"], rel=1e-6)
    assert c.significant is significant
    assert (h["p"] < ALPHA) is significant
    if improvement < MARGIN_NATS:
        assert c.more_seeds_needed is None
        assert "no number of seeds makes this significant" in c.message


def test_improvement_exactly_at_the_margin_is_a_coin_toss() -> None:
    c = compare(sample(1.8840, 0.0004, 3), sample(1.8890, 0.0004, 3))
    assert c.improvement == pytest.approx(0.005, abs=1e-12)
    assert c.t == pytest.approx(0.0, abs=1e-6)
    assert c.p_value == pytest.approx(0.5, abs=1e-6)
    assert not c.significant and c.more_seeds_needed is None


# --------------------------------------------------------------------------- #
# Confidence interval
# --------------------------------------------------------------------------- #


def test_ci_contains_the_improvement_and_its_edges_have_the_right_tail() -> None:
    c = compare(CANDIDATE, BASELINE)
    h = hand_welch(CANDIDATE, BASELINE)
    assert c.ci_low < c.improvement < c.ci_high
    assert (c.ci_low + c.ci_high) / 2 == pytest.approx(h["d"], rel=1e-12)
    # The half-width w satisfies P(T_df > w / SE) = (1 - 0.95) / 2.
    w = (c.ci_high - c.ci_low) / 2
    assert float(t_dist.sf(w / h["se"], h["df"])) == pytest.approx(0.025, rel=1e-8)
    assert "95% CI" in c.message and f"{c.ci_low:.4f}..{c.ci_high:.4f}" in c.message


def test_ci_shrinks_with_more_seeds_and_widens_with_confidence() -> None:
    widths = []
    for n in (2, 3, 5, 10, 20):
        c = compare(sample(1.8860, 0.0008, n), sample(1.8930, 0.0008, n))
        assert c.ci_low < c.improvement < c.ci_high
        widths.append(c.ci_high - c.ci_low)
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
    c95 = compare(CANDIDATE, BASELINE, confidence=0.95)
    c99 = compare(CANDIDATE, BASELINE, confidence=0.99)
    assert c99.ci_low < c95.ci_low and c99.ci_high > c95.ci_high
    assert "99% CI" in c99.message


# --------------------------------------------------------------------------- #
# Seeds needed
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("improvement", "std"),
    [(0.0060, 0.0010), (0.0070, 0.0010), (0.0055, 0.0008), (0.0080, 0.0015), (0.0052, 0.0003)],
)
def test_seeds_needed_is_the_smallest_n_that_reaches_alpha(improvement: float, std: float) -> None:
    n = seeds_needed(improvement, std)
    assert n is not None and n >= 3
    assert equal_n_p(improvement, std, n) < ALPHA
    assert equal_n_p(improvement, std, n - 1) >= ALPHA
    # And compare() agrees on data built with that spread.
    assert compare(sample(1.89 - improvement, std, n), sample(1.89, std, n)).significant
    assert not compare(sample(1.89 - improvement, std, n - 1), sample(1.89, std, n - 1)).significant


def test_seeds_needed_limits() -> None:
    assert seeds_needed(0.0050, 0.001) is None  # at the margin: never
    assert seeds_needed(0.0030, 0.001) is None  # below it: never
    assert seeds_needed(-0.002, 0.001) is None
    assert seeds_needed(0.0060, 0.0) == 2  # no spread: the smallest testable n
    assert seeds_needed(0.00501, 0.002) is None  # would need far more than 100
    n = seeds_needed(0.0060, 0.001, alpha=0.05)
    assert n is not None and n < seeds_needed(0.0060, 0.001)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            seeds_needed(bad, 0.001)
        with pytest.raises(ValueError):
            seeds_needed(0.006, bad)
    with pytest.raises(ValueError):
        seeds_needed(0.006, -0.001)


def test_one_candidate_seed_estimates_from_the_baseline_spread() -> None:
    baseline = sample(1.8930, 0.0010, 3)
    candidate = [1.8865]  # improvement 0.0065
    c = compare(candidate, baseline)
    assert not c.enough_seeds and not c.significant
    assert c.p_value is None and c.t is None and c.df is None and c.ci_low is None
    assert c.improvement == pytest.approx(0.0065, abs=1e-12)
    # Hand: smallest n with equal_n_p < 0.01 at sd 0.001.
    n = next(k for k in range(2, 101) if equal_n_p(0.0065, 0.0010, k) < ALPHA)
    assert equal_n_p(0.0065, 0.0010, n - 1) >= ALPHA
    assert c.more_seeds_needed == n - 1  # extra seeds beyond the candidate's one
    assert c.message.startswith("not enough seeds: candidate has 1, baseline 3")
    assert f"about {n - 1} more seeds on the candidate side would reach p < 0.01" in c.message
    assert_no_nan(c)


def test_one_baseline_seed_estimates_from_the_candidate_spread() -> None:
    candidate = sample(1.8860, 0.0007, 4)
    c = compare(candidate, [1.8930])
    n = seeds_needed(0.0070, 0.0007)
    assert n is not None
    assert equal_n_p(0.0070, 0.0007, n) < ALPHA <= equal_n_p(0.0070, 0.0007, n - 1)
    assert c.more_seeds_needed == max(1, n - 1)
    assert "on the baseline side" in c.message


def test_not_significant_yet_says_how_many_more_seeds() -> None:
    # 2 seeds a side, improvement 0.0068 at sd 0.001: not yet significant.
    candidate, baseline = sample(1.8862, 0.0010, 2), sample(1.8930, 0.0010, 2)
    c = compare(candidate, baseline)
    assert c.enough_seeds and not c.significant
    n = seeds_needed(0.0068, 0.0010)
    assert n is not None and n > 2
    assert c.more_seeds_needed == n - 2
    assert equal_n_p(0.0068, 0.0010, n) < ALPHA <= equal_n_p(0.0068, 0.0010, n - 1)
    assert compare(sample(1.8862, 0.0010, n), sample(1.8930, 0.0010, n)).significant
    assert f"about {n - 2} more seeds on each side" in c.message


@pytest.mark.parametrize(
    ("candidate", "baseline", "phrase"),
    [
        ([], [1.8930, 1.8935], "the candidate has no values"),
        ([1.8860, 1.8870], [], "the baseline has no values"),
        ([], [], "the candidate has no values"),
        ([1.8860], [1.8930], "the spread is unknown"),
        ([1.8910], sample(1.8930, 0.001, 3), "no number of seeds makes this significant"),
    ],
)
def test_not_enough_seeds_paths(candidate: list[float], baseline: list[float], phrase: str) -> None:
    c = compare(candidate, baseline)
    assert not c.enough_seeds and not c.significant
    assert c.p_value is None and c.t is None and c.df is None
    assert c.ci_low is None and c.ci_high is None
    assert c.more_seeds_needed is None
    assert c.message.startswith(f"not enough seeds: candidate has {len(candidate)}, baseline {len(baseline)}")
    assert phrase in c.message
    assert_no_nan(c)


# --------------------------------------------------------------------------- #
# Zero spread, bad input
# --------------------------------------------------------------------------- #


def test_identical_seeds_above_the_margin_is_p_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing from scipy leaks out either
        c = compare([1.8870] * 3, [1.8930] * 3)
    assert c.p_value == 0.0 and c.significant
    assert c.t is None and c.df is None
    assert c.ci_low == c.ci_high == c.improvement == pytest.approx(0.006, abs=1e-12)
    assert "zero spread" in c.message and "significant" in c.message
    assert_no_nan(c)


@pytest.mark.parametrize("improvement", [0.0050, 0.0030, 0.0, -0.002])
def test_identical_seeds_at_or_below_the_margin_is_p_one(improvement: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare([1.8930 - improvement] * 3, [1.8930] * 3)
    assert c.p_value == 1.0 and not c.significant
    assert c.more_seeds_needed is None
    assert "no number of seeds makes this significant" in c.message
    assert_no_nan(c)


def test_nearly_identical_seeds_do_not_warn_or_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare([1.8870, 1.8870 + 1e-15, 1.8870], [1.8930, 1.8930, 1.8930 + 1e-15])
    assert c.significant
    assert_no_nan(c)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"candidate value #2 is {bad!r}"):
        compare([1.8860, bad, 1.8870], BASELINE)
    with pytest.raises(ValueError, match=rf"baseline value #1 is {bad!r}"):
        compare(CANDIDATE, [bad, 1.8930])


def test_bad_parameters_are_rejected() -> None:
    for kwargs in ({"alpha": 0.0}, {"alpha": 1.5}, {"confidence": 1.0}, {"margin": float("nan")}):
        with pytest.raises(ValueError):
            compare(CANDIDATE, BASELINE, **kwargs)


def test_more_than_the_seed_limit_is_reported_not_guessed() -> None:
    # 0.00001 nats over the margin at sd 0.002 would take ~400,000 seeds a side.
    c = compare(sample(1.8900 - 0.00501, 0.002, 3), sample(1.8900, 0.002, 3))
    assert not c.significant and c.more_seeds_needed is None
    assert "more than 100 seeds per side" in c.message
    one = compare([1.8900 - 0.00501], sample(1.8900, 0.002, 3))
    assert one.more_seeds_needed is None and "more than 100 seeds per side" in one.message


# --- policies, in nats per byte (issue 19 item 4) ------------------------------------------------

# (val_bpb, val_loss) per seed: an SP8192 group 0.0366 bpb better than an SP1024 one; per token
# its loss is far higher (bigger tokens), so a per-token test calls it 0.9 nats worse.
SP8192 = [(1.0810, 2.7930), (1.0815, 2.7943), (1.0805, 2.7917)]
SP1024 = [(1.1176, 1.8870), (1.1180, 1.8877), (1.1181, 1.8879)]


def test_across_tokenizers_the_test_runs_in_nats_per_byte_and_says_so() -> None:
    per_token = compare([x for _, x in SP8192], [x for _, x in SP1024])
    assert per_token.improvement < -0.9 and not per_token.significant
    c = compare_policy(SP8192, SP1024)
    assert c.significant and c.unit == "nats per byte" and c.policy == "readme"
    assert c.improvement == pytest.approx(nats_per_byte(statistics.mean(b for b, _ in SP1024) - statistics.mean(b for b, _ in SP8192)))
    assert "nats per byte" in c.message and "policy readme" in c.message and " nats (" not in c.message


def test_within_one_tokenizer_the_readme_policy_is_the_per_token_test() -> None:
    """Same val set and tokenizer: nats per byte is val_loss times one constant, the margin too."""
    ratio = 2.436  # bytes per token
    cand = [(loss / ratio / math.log(2), loss) for loss in (1.8800, 1.8806, 1.8797)]
    base = [(loss / ratio / math.log(2), loss) for loss in (1.8900, 1.8906, 1.8896)]
    per_token = compare([x for _, x in cand], [x for _, x in base])
    c = compare_policy(cand, base, "readme")
    assert c.p_value == pytest.approx(per_token.p_value, rel=1e-6) and c.margin == pytest.approx(0.005 / ratio)


def test_the_maintainers_cutoff_and_the_systems_waiver_by_name() -> None:
    close = [(1.1190, 1.8893), (1.1196, 1.8903), (1.1185, 1.8884)]
    base = [(1.1194, 1.8900), (1.1199, 1.8908), (1.1188, 1.8889)]
    readme, maint, waiver = (compare_policy(close, base, p) for p in ("readme", "maintainers", "systems_only"))
    assert not readme.significant and readme.alpha == 0.01
    assert maint.margin == 0 and maint.alpha == 0.25 and "p < 0.25" in maint.message and maint.policy == "maintainers"
    assert waiver.significant and "waived" in waiver.message and waiver.policy == "systems_only"
    assert set(POLICIES) == {"readme", "maintainers", "systems_only"}
    with pytest.raises(ValueError, match="policy 'loose'"):
        compare_policy(close, base, "loose")


def test_flagged_groups_are_never_significant_and_say_why() -> None:
    c = compare_policy(SP8192, SP1024, flags=["track 10min_16mb against unlimited", "hardware H100:8 against cpu"])
    assert not c.significant and c.flags == ("track 10min_16mb against unlimited", "hardware H100:8 against cpu")
    assert c.message.startswith("not comparable: track 10min_16mb against unlimited; hardware H100:8 against cpu")
