"""A trial's final val_bpb, predicted from its train-loss curve so far.

For each checkpoint step k (CHECKPOINTS), one straight line fitted by least squares
over finished curves (the public records' logs, the team's finished runs):

    final_val_bpb ≈ a_k + b_k · x_k,   x_k = mean train loss logged in (0.8·k, k] × bpb_per_nat

``bpb_per_nat`` (= val_bpb / val_loss of a finished run: tokens per byte / ln 2) puts
train losses of different tokenizers on one scale; an sp8192 curve's nats are not an
sp1024 curve's. The prediction's standard error is the line's prediction interval:

    se = s_k · sqrt(1 + 1/n + (x − x̄)² / Sxx),   s_k = residual std (n − 2 degrees of freedom)

``accuracy`` measures it honestly: leave one group out (a record folder's seeds, a run
group's seeds are near copies of each other), correlation and errors per step. Pure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CHECKPOINTS = (500, 1000, 1500, 2000, 3000, 4000)
WINDOW = 0.2  # the feature averages train losses in (k·(1−WINDOW), k]: one batch's loss is noisy
MIN_CURVES = 8  # fewer finished curves reaching k: no line at k


@dataclass(frozen=True)
class Curve:
    """One finished (or, to predict, running) training curve."""

    source: str  # "record:<folder>/<log>" or "run:<id>"
    group: str  # curves of one group are left out together when measuring accuracy
    points: tuple[tuple[int, float], ...]  # (step, train loss in nats), by step
    bpb_per_nat: float
    final_bpb: float | None = None


def feature(points: Sequence[tuple[int, float]], k: int, bpb_per_nat: float) -> float | None:
    """x_k, or None if the curve has not reached step k or logged nothing in its window."""
    if not points or max(s for s, _ in points) < k:
        return None
    losses = [loss for s, loss in points if k * (1 - WINDOW) < s <= k and math.isfinite(loss)]
    if not losses:
        return None
    return statistics.fmean(losses) * bpb_per_nat


@dataclass(frozen=True)
class StepFit:
    step: int
    n: int
    a: float
    b: float
    x_mean: float
    sxx: float
    resid_std: float

    def predict(self, x: float) -> tuple[float, float]:
        """(predicted final val_bpb, its standard error as a prediction interval)."""
        se = self.resid_std * math.sqrt(1 + 1 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        return self.a + self.b * x, se


def fit_line(xs: Sequence[float], ys: Sequence[float], step: int) -> StepFit | None:
    n = len(xs)
    if n < max(3, MIN_CURVES):
        return None
    xm, ym = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx <= 0:
        return None
    b = sum((x - xm) * (y - ym) for x, y in zip(xs, ys)) / sxx
    a = ym - b * xm
    rss = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return StepFit(step, n, a, b, xm, sxx, math.sqrt(rss / (n - 2)))


@dataclass(frozen=True)
class Prediction:
    step: int  # the checkpoint it used
    x: float
    mean: float
    se: float
    fit: StepFit


@dataclass(frozen=True)
class Predictor:
    fits: dict[int, StepFit]

    @classmethod
    def fit(cls, curves: Iterable[Curve], checkpoints: Sequence[int] = CHECKPOINTS) -> Predictor:
        finished = [c for c in curves if c.final_bpb is not None and math.isfinite(c.final_bpb)]
        fits = {}
        for k in checkpoints:
            pairs = [(x, c.final_bpb) for c in finished if (x := feature(c.points, k, c.bpb_per_nat)) is not None]
            line = fit_line([p[0] for p in pairs], [p[1] for p in pairs], k)  # type: ignore[misc]
            if line is not None:
                fits[k] = line
        return cls(fits)

    def predict(self, points: Sequence[tuple[int, float]], bpb_per_nat: float) -> Prediction | None:
        """From the latest checkpoint the curve has reached that has a line; None before the first."""
        for k in sorted(self.fits, reverse=True):
            x = feature(points, k, bpb_per_nat)
            if x is not None:
                mean, se = self.fits[k].predict(x)
                return Prediction(k, x, mean, se, self.fits[k])
        return None


@dataclass(frozen=True)
class StepAccuracy:
    step: int
    n: int  # curves that reached the step
    groups: int
    correlation: float  # Pearson, x_k against the final val_bpb
    rmse: float  # leave-one-group-out prediction error, bpb
    mae: float
    resid_std: float  # of the line fitted on all of them
    coverage: float  # share of left-out finals inside mean ± 1.96·se (0.95 if the errors are as stated)


def accuracy(curves: Sequence[Curve], checkpoints: Sequence[int] = CHECKPOINTS) -> list[StepAccuracy]:
    out = []
    finished = [c for c in curves if c.final_bpb is not None]
    for k in checkpoints:
        rows = [(c.group, x, c.final_bpb) for c in finished if (x := feature(c.points, k, c.bpb_per_nat)) is not None]
        groups = sorted({g for g, _, _ in rows})
        if len(rows) < MIN_CURVES + 2 or len(groups) < 3:
            continue
        xs, ys = [r[1] for r in rows], [r[2] for r in rows]
        errors, inside = [], 0
        for g in groups:
            train = [r for r in rows if r[0] != g]
            line = fit_line([r[1] for r in train], [r[2] for r in train], k)  # type: ignore[misc]
            if line is None:
                continue
            for _, x, y in (r for r in rows if r[0] == g):
                mean, se = line.predict(x)
                errors.append(mean - y)  # type: ignore[operator]
                inside += abs(mean - y) <= 1.96 * se  # type: ignore[operator]
        whole = fit_line(xs, ys, k)  # type: ignore[arg-type]
        if not errors or whole is None:
            continue
        out.append(StepAccuracy(
            step=k, n=len(rows), groups=len(groups), correlation=statistics.correlation(xs, ys),  # type: ignore[arg-type]
            rmse=math.sqrt(statistics.fmean(e * e for e in errors)), mae=statistics.fmean(abs(e) for e in errors),
            resid_std=whole.resid_std, coverage=inside / len(errors),
        ))  # fmt: skip
    return out
