"""Statistics over seeds: summaries and the challenge's significance test.

Pure functions, no I/O. A new Parameter Golf record must lower the mean
``val_loss`` of the current best by at least ``MARGIN_NATS`` (0.005 nats) with
a one-sided Welch t-test at ``p < ALPHA`` (0.01), usually over 3 seeds.

Notation: the candidate group has ``n_c`` values with mean ``x̄_c`` and sample
variance ``s_c²`` (ddof = 1); the baseline group likewise ``n_b``, ``x̄_b``,
``s_b²``; ``m`` is the margin.

* improvement      ``d = x̄_b - x̄_c`` (nats; positive = candidate better)
* standard error   ``SE = sqrt(s_c²/n_c + s_b²/n_b)``
* Welch t          ``t = (x̄_b - x̄_c - m) / SE``
* Welch–Satterthwaite degrees of freedom
  ``df = (s_c²/n_c + s_b²/n_b)² / ((s_c²/n_c)²/(n_c-1) + (s_b²/n_b)²/(n_b-1))``
* one-sided p-value, H0: ``d <= m`` against H1: ``d > m``:
  ``p = P(T_df >= t)``
* two-sided ``confidence`` interval of ``d``:
  ``d ± t_{(1+confidence)/2, df} · SE``

The p-value comes from scipy (``scipy.stats.ttest_ind(candidate,
[b - m for b in baseline], equal_var=False, alternative="less")``, which tests
H0: mean_c >= mean_b - m). scipy's statistic is ``(x̄_c - x̄_b + m) / SE``; this
module reports it with the sign flipped, so that a positive ``t`` means "the
candidate beats the baseline by more than the margin".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

MARGIN_NATS = 0.005
ALPHA = 0.01
_MAX_SEEDS = 100  # compare()'s search limit for more_seeds_needed


# --------------------------------------------------------------------------- #
# Summary
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one group's values (one value per seed)."""

    n: int
    mean: float | None  # None when n == 0
    std: float | None = field(metadata={"description": "sample standard deviation (n-1); null below 2 seeds"})  # ddof=1
    min: float | None
    max: float | None


def finite_or_none(x: float | None) -> float | None:
    """``x``, or None when it is not a finite number: JSON has no NaN or infinity, and such a
    figure is unknown (the API and the records/ export both write them this way)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _finite_values(values: Sequence[float], what: str = "value") -> list[float]:
    """The values as floats; ValueError naming the first NaN, inf or non-number."""
    out: list[float] = []
    for i, v in enumerate(values):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{what} #{i + 1} is {v!r}: not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"{what} #{i + 1} is {x!r}: values must be finite numbers")
        out.append(x)
    return out


def _summary_of(xs: list[float]) -> Summary:
    n = len(xs)
    if n == 0:
        return Summary(n=0, mean=None, std=None, min=None, max=None)
    lo, hi = min(xs), max(xs)
    if lo == hi:
        # Identical values: exact mean, exactly zero spread (no rounding noise).
        return Summary(n=n, mean=lo, std=0.0 if n >= 2 else None, min=lo, max=hi)
    mean = math.fsum(xs) / n
    mean = min(max(mean, lo), hi)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n >= 2 else None
    return Summary(n=n, mean=mean, std=std, min=lo, max=hi)


def summarise(values: Sequence[float]) -> Summary:
    """n, mean, sample standard deviation (ddof=1), min and max of ``values``.

    ``mean = Σx / n``; ``std = sqrt(Σ(x - mean)² / (n - 1))``. Empty input
    gives all None; a single value has no std. NaN or inf raise ValueError.
    """
    return _summary_of(_finite_values(values))


# --------------------------------------------------------------------------- #
# Seeds needed
# --------------------------------------------------------------------------- #


def _check_finite(name: str, value: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return x


def _check_probability(name: str, value: float) -> float:
    x = _check_finite(name, value)
    if not 0.0 < x < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return x


def seeds_needed(
    improvement: float,
    std: float,
    margin: float = MARGIN_NATS,
    alpha: float = ALPHA,
    max_seeds: int = 100,
) -> int | None:
    """Smallest number of seeds per side that reaches one-sided Welch p < alpha.

    Assumes both sides have the same n and the same sample standard deviation
    ``std`` and that the observed ``improvement`` stays as it is. Then
    ``SE = std·sqrt(2/n)``, Welch's df is exactly ``2n - 2``, and n is the
    smallest n >= 2 with

        (improvement - margin) / (std·sqrt(2/n)) > t_{1-alpha, 2n-2}

    i.e. ``P(T_{2n-2} >= t) < alpha``. This is a point estimate at the
    observed spread, not a power calculation.

    Returns the total per side (not the extra seeds), or None when it can never
    be reached (``improvement <= margin``) or needs more than ``max_seeds``.
    With ``std == 0`` and ``improvement > margin`` the answer is 2, the
    smallest n for which the test is defined.
    """
    improvement = _check_finite("improvement", improvement)
    std = _check_finite("std", std)
    margin = _check_finite("margin", margin)
    alpha = _check_probability("alpha", alpha)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    excess = improvement - margin
    if not excess > 0:
        return None
    if std == 0:
        return 2 if max_seeds >= 2 else None
    from scipy import stats  # here, not at module level: it weighs ~90 MB in every process

    for n in range(2, max_seeds + 1):
        t = excess / (std * math.sqrt(2.0 / n))
        if float(stats.t.sf(t, 2 * n - 2)) < alpha:
            return n
    return None


# --------------------------------------------------------------------------- #
# Comparison
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Comparison:
    """Is the candidate's mean val_loss lower than the baseline's by more than `margin`?

    ``improvement = mean_baseline - mean_candidate`` (nats; positive = the
    candidate is better). ``t``, ``df`` and ``p_value`` are the one-sided Welch
    test of H0: improvement <= margin against H1: improvement > margin;
    ``ci_low``/``ci_high`` the two-sided ``confidence`` interval of the
    improvement. ``more_seeds_needed`` is 0 when already significant, a
    positive count of extra seeds per side (on the side with fewer seeds)
    when the observed spread says more seeds would get there, and None when
    that cannot be estimated or can never be reached.

    A field's ``description`` (metadata) is what the API's comparison body says of it
    (service/results/schemas.py builds that body from this class).
    """

    n_candidate: int
    n_baseline: int
    mean_candidate: float | None = field(metadata={"description": "mean loss in `unit` (nats per byte: val_bpb x ln 2)"})
    mean_baseline: float | None
    improvement: float | None = field(metadata={"description": "baseline minus candidate mean, in `unit`"})
    margin: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    t: float | None
    df: float | None
    p_value: float | None = field(metadata={"description": "one-sided Welch test that improvement > margin"})
    significant: bool
    alpha: float
    enough_seeds: bool
    more_seeds_needed: int | None
    message: str
    # "nats" (per token) for a bare test; the API compares in "nats per byte"
    unit: str = field(default="nats", metadata={"description": "of means, improvement, margin and CI: 'nats per byte' (valid across tokenizers)"})
    # "" for a bare test
    policy: str = field(default="", metadata={"description": "the significance policy: readme, maintainers or systems_only"})
    flags: tuple[str, ...] = field(default=(), metadata={"description": "why the groups are not comparable (track, hardware, validation set); then never significant"})


def _fmt_nats(x: float) -> str:
    return f"{x:.4f}"


def _fmt_p(p: float) -> str:
    if p == 0.0:
        return "0"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def _fmt_num(x: float) -> str:
    """A short form of margin / alpha: 0.005, 0.01."""
    return f"{x:g}"


def _fmt_conf(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _seeds_phrase(n_c: int, n_b: int, extra: int, alpha: float) -> str:
    """"about 2 more seeds on the candidate side would reach p < 0.01 ... (3 on each side)"."""
    side = "each" if n_c == n_b else ("the candidate" if n_c < n_b else "the baseline")
    seeds = "seed" if extra == 1 else "seeds"
    return (
        f"about {extra} more {seeds} on {side} side would reach p < {_fmt_num(alpha)} "
        f"at the observed spread ({min(n_c, n_b) + extra} seeds on each side)"
    )


def _never_phrase(improvement: float, margin: float) -> str:
    return (
        f"improvement {_fmt_nats(improvement)} nats is not above the {_fmt_num(margin)} margin: "
        "no number of seeds makes this significant"
    )


def compare(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    margin: float = MARGIN_NATS,
    alpha: float = ALPHA,
    confidence: float = 0.95,
    unit: str = "nats",
) -> Comparison:
    """One-sided Welch t-test that ``candidate`` beats ``baseline`` by more than ``margin``.

    ``candidate`` and ``baseline`` are val_loss values, one per seed. See the
    module docstring for the formulas; t, df and the p-value come from
    ``scipy.stats.ttest_ind(candidate, [b - margin for b in baseline],
    equal_var=False, alternative="less")`` (t sign-flipped, see there).

    Edge cases (never an exception or NaN, except ValueError on bad input):

    * fewer than 2 values on either side: no test (t, df, p, CI are None),
      "not enough seeds". If a side with >= 2 values shows a spread and both
      sides have a mean, ``more_seeds_needed`` is estimated with
      :func:`seeds_needed` at that spread (equal n and spread on both sides),
      as extra seeds on the smaller side, at least 1.
    * zero spread on both sides (every seed identical): scipy's t would be
      ±inf or NaN, so this module decides: p = 0.0 when improvement > margin,
      p = 1.0 otherwise; t and df are None (undefined) and the CI is the
      single point [improvement, improvement].
    * NaN or inf in the inputs: ValueError naming the value.
    """
    c = _finite_values(candidate, "candidate value")
    b = _finite_values(baseline, "baseline value")
    margin = _check_finite("margin", margin)
    alpha = _check_probability("alpha", alpha)
    confidence = _check_probability("confidence", confidence)

    sc, sb = _summary_of(c), _summary_of(b)
    n_c, n_b = sc.n, sb.n
    improvement = None
    if sc.mean is not None and sb.mean is not None:
        improvement = sb.mean - sc.mean

    def result(
        *,
        message: str,
        ci: tuple[float, float] | None = None,
        t: float | None = None,
        df: float | None = None,
        p: float | None = None,
        more: int | None = None,
    ) -> Comparison:
        if unit != "nats":  # the phrases below are written in nats; the figures are in `unit`
            message = message.replace(" nats", f" {unit}")
        return Comparison(
            n_candidate=n_c,
            n_baseline=n_b,
            mean_candidate=sc.mean,
            mean_baseline=sb.mean,
            improvement=improvement,
            margin=float(margin),
            ci_low=ci[0] if ci else None,
            ci_high=ci[1] if ci else None,
            confidence=float(confidence),
            t=t,
            df=df,
            p_value=p,
            significant=p is not None and p < alpha,
            alpha=float(alpha),
            enough_seeds=n_c >= 2 and n_b >= 2,
            more_seeds_needed=more,
            message=message,
            unit=unit,
        )

    # ---- not enough seeds ------------------------------------------------ #
    if n_c < 2 or n_b < 2:
        head = f"not enough seeds: candidate has {n_c}, baseline {n_b} (at least 2 each are needed)"
        if improvement is None:
            empty = "candidate" if n_c == 0 else "baseline"
            return result(message=f"{head}; the {empty} has no values, so there is nothing to compare")
        spreads = [s.std for s in (sc, sb) if s.std is not None]
        if not spreads:
            return result(
                message=f"{head}; improvement {_fmt_nats(improvement)} nats so far, "
                "and the spread is unknown until one side has 2 seeds"
            )
        if improvement - margin <= 0:
            return result(message=f"{head}; {_never_phrase(improvement, margin)}")
        s = spreads[0]
        n = seeds_needed(improvement, s, margin, alpha, _MAX_SEEDS)
        if n is None:
            return result(
                message=f"{head}; improvement {_fmt_nats(improvement)} nats, but more than {_MAX_SEEDS} seeds "
                f"per side would be needed to reach p < {_fmt_num(alpha)} at the observed spread"
            )
        extra = max(1, n - min(n_c, n_b))
        return result(message=f"{head}; {_seeds_phrase(n_c, n_b, extra, alpha)}", more=extra)

    assert improvement is not None and sc.std is not None and sb.std is not None
    conf = _fmt_conf(confidence)

    # ---- zero spread on both sides -------------------------------------- #
    if sc.std == 0.0 and sb.std == 0.0:
        ci = (improvement, improvement)
        if improvement > margin:
            return result(
                message=f"improvement {_fmt_nats(improvement)} nats with zero spread (every seed "
                f"identical on both sides), p = 0 < {_fmt_num(alpha)}: significant",
                ci=ci,
                p=0.0,
                more=0,
            )
        return result(
            message=f"{_never_phrase(improvement, margin)} (zero spread: every seed identical on "
            "both sides, p = 1)",
            ci=ci,
            p=1.0,
        )

    # ---- the Welch test ------------------------------------------------- #
    shifted = [x - margin for x in b]
    with warnings.catch_warnings():
        # Nearly identical seeds make scipy warn about precision loss in the
        # variance; the zero-spread case is handled above, the rest is fine.
        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
        from scipy import stats  # here, not at module level: it weighs ~90 MB in every process
        res = stats.ttest_ind(c, shifted, equal_var=False, alternative="less")
    t = -float(res.statistic)
    df = float(res.df)
    p = float(res.pvalue)
    if not (math.isfinite(t) and math.isfinite(df) and math.isfinite(p)):  # pragma: no cover
        # Cannot happen with finite inputs and a non-zero spread; never leak NaN.
        return result(message=f"improvement {_fmt_nats(improvement)} nats: the test is undefined "
                      "for these values")
    p = min(max(p, 0.0), 1.0)
    se = math.sqrt(sc.std**2 / n_c + sb.std**2 / n_b)
    from scipy import stats  # here, not at module level: it weighs ~90 MB in every process
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df)) * se
    ci = (improvement - half, improvement + half)
    stats_text = (
        f"improvement {_fmt_nats(improvement)} nats ({conf} CI {_fmt_nats(ci[0])}..{_fmt_nats(ci[1])}), "
        f"p = {_fmt_p(p)}"
    )

    if p < alpha:
        return result(
            message=f"{stats_text} < {_fmt_num(alpha)}: significant",
            ci=ci, t=t, df=df, p=p, more=0,
        )
    if improvement <= margin:
        return result(
            message=f"{_never_phrase(improvement, margin)} ({conf} CI "
            f"{_fmt_nats(ci[0])}..{_fmt_nats(ci[1])}, p = {_fmt_p(p)})",
            ci=ci, t=t, df=df, p=p,
        )
    # Equal-n equivalent of the observed spread: SE² = (s_c² + s_b²)/n = s²·2/n.
    s = math.sqrt((sc.std**2 + sb.std**2) / 2.0)
    n = seeds_needed(improvement, s, margin, alpha, _MAX_SEEDS)
    head = f"{stats_text} >= {_fmt_num(alpha)}: not significant"
    if n is None:
        return result(
            message=f"{head}; more than {_MAX_SEEDS} seeds per side would be needed at the observed spread",
            ci=ci, t=t, df=df, p=p,
        )
    extra = max(1, n - min(n_c, n_b))
    return result(
        message=f"{head}; {_seeds_phrase(n_c, n_b, extra, alpha)}",
        ci=ci, t=t, df=df, p=p, more=extra,
    )


# --------------------------------------------------------------------------- #
# Policies, in a unit valid across tokenizers
# --------------------------------------------------------------------------- #

PER_BYTE = "nats per byte"


@dataclass(frozen=True)
class Policy:
    """A named significance rule. ``margin_nats`` is per token, as the README states it; the
    test runs in nats per byte (see ``compare_policy``)."""

    name: str
    margin_nats: float
    alpha: float
    waived: bool
    description: str


POLICIES: dict[str, Policy] = {
    "readme": Policy("readme", MARGIN_NATS, ALPHA, False,
                     "the challenge README: beat the record by 0.005 nats at p < 0.01"),
    "maintainers": Policy("maintainers", 0.0, 0.25, False,
                          "the maintainers' applied cutoff: against the chronological frontier, p < 0.25, no margin"),
    "systems_only": Policy("systems_only", 0.0, ALPHA, True,
                           "the README's systems-only waiver: speed without changing the ML needs no significance "
                           "(declared by the team)"),
}
DEFAULT_POLICY = "readme"


def nats_per_byte(bpb: float) -> float:
    """val_bpb is bits per byte; the same loss in nats per byte. Bytes are the text's, whatever
    the tokenizer, so two groups of different vocabularies compare in this unit (val_loss is
    per token, and tokens of SP1024 and SP8192 are not the same size)."""
    return bpb * math.log(2)


def compare_policy(candidate: Sequence[tuple[float, float]], baseline: Sequence[tuple[float, float]],
                   policy: str = DEFAULT_POLICY, flags: Sequence[str] = ()) -> Comparison:
    """The candidate against the baseline under a named policy; each side is [(val_bpb, val_loss)]
    per seed. The test runs in nats per byte; the policy's per-token margin becomes per byte
    through the baseline's own bytes per token (val_loss / (val_bpb · ln 2)), which leaves the
    README's rule exactly as it was between groups of one tokenizer. ``flags`` (why the groups
    are not comparable) make the comparison never significant and lead its message."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: must be one of {', '.join(POLICIES)}")
    pol = POLICIES[policy]
    c = [nats_per_byte(b) for b, _ in candidate]
    b = [nats_per_byte(x) for x, _ in baseline]
    margin = 0.0
    if pol.margin_nats:
        ratios = [loss / nats_per_byte(bpb) for bpb, loss in baseline if bpb > 0 and loss is not None]
        if ratios:
            margin = pol.margin_nats / (math.fsum(ratios) / len(ratios))
        elif baseline:
            flags = [*flags, "the baseline reports no val_loss, so the per-token margin cannot be put in nats per byte"]
    comp = compare(c, b, margin=margin, alpha=pol.alpha, unit=PER_BYTE)
    head = f"policy {pol.name} ({pol.description}; tested in {PER_BYTE}"
    head += f", margin {pol.margin_nats:g} nats per token = {margin:.5f} {PER_BYTE})" if pol.margin_nats else ")"
    message, significant = f"{head}: {comp.message}", comp.significant
    if pol.waived:
        significant = True
        message = f"{head}: significance waived; for information: {comp.message}"
    if flags:
        significant = False
        message = f"not comparable: {'; '.join(flags)}; never significant (the test alone would say: {message})"
    return replace(comp, message=message, significant=significant, policy=pol.name, flags=tuple(flags))
