"""What a sweep does next, from plain facts (pure; service.sweeps.store does the I/O).

    trial_end(runs)          a trial whose runs all ended: complete (mean val_bpb of its
                             SUCCEEDED runs) or failed (none succeeded)
    judge_prune(pred, best)  stop a trial whose predicted final val_bpb is worse than the
                             best trial's by more than ``margin`` with probability >= ``confidence``
                             over all its looks (a trial is judged at every checkpoint it
                             passes: each look asks for 1 − (1 − confidence)/looks, Bonferroni)
    slots(facts)             how many trials to start now: within max trials, max at once
                             and the GPU-hour budget (spent + what open trials may still use)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from service.sweeps.predictor import Prediction

# A trial's states. pending: its row exists, its runs are not submitted yet (a crash between
# the two is finished by the next tick, through the submission's idempotency key).
PENDING, RUNNING, COMPLETE, FAILED, PRUNED, STOPPED = "pending", "running", "complete", "failed", "pruned", "stopped"
OPEN_TRIALS = (PENDING, RUNNING)
# A sweep's states.
SWEEP_RUNNING, SWEEP_STOPPED, SWEEP_DONE = "running", "stopped", "done"
RUN_TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "ABORTED_BEHIND")


@dataclass(frozen=True)
class TrialEnd:
    status: str  # COMPLETE or FAILED
    value: float | None
    reason: str


def trial_end(runs: Sequence[tuple[str, float | None]]) -> TrialEnd | None:
    """``runs``: (status, val_bpb) of the trial's runs. None while any is still going."""
    if not runs or any(status not in RUN_TERMINAL for status, _ in runs):
        return None
    values = [v for status, v in runs if status == "SUCCEEDED" and v is not None and math.isfinite(v)]
    if not values:
        return TrialEnd(FAILED, None, "no run of the trial succeeded: " + ", ".join(s for s, _ in runs))
    return TrialEnd(COMPLETE, statistics.fmean(values), f"mean val_bpb of {len(values)} of {len(runs)} runs")


@dataclass(frozen=True)
class PruneRule:
    margin: float = 0.0  # bpb: pruned only if worse than the best by more than this
    confidence: float = 0.95  # one-sided, under the predictor's normal prediction interval
    min_step: int = 500  # no decision before this step (the earliest checkpoint with a line)


@dataclass(frozen=True)
class PruneVerdict:
    step: int
    predicted: float
    se: float
    best: float
    best_trial: int
    margin: float
    probability: float  # that the trial ends worse than best + margin
    confidence: float  # the rule's, over all looks
    fit_n: int
    looks: int = 1  # checkpoints a trial is judged at; each look needed 1 - (1 - confidence) / looks

    @property
    def reason(self) -> str:
        return (f"pruned at step {self.step}: predicted final val_bpb {self.predicted:.4f} ± {self.se:.4f} (1 s.e.), "
                f"worse than trial #{self.best_trial}'s {self.best:.4f} + margin {self.margin:g} with probability "
                f"{self.probability:.4f} >= {1 - (1 - self.confidence) / self.looks:.4f} (confidence {self.confidence:g} over "
                f"{self.looks} looks; line fitted on {self.fit_n} finished curves)")  # fmt: skip

    def to_json(self) -> dict[str, float | int]:
        return {"step": self.step, "predicted_bpb": self.predicted, "se": self.se, "best_bpb": self.best, "best_trial": self.best_trial,
                "margin": self.margin, "probability": self.probability, "confidence": self.confidence, "looks": self.looks,
                "fit_curves": self.fit_n}  # fmt: skip


def judge_prune(prediction: Prediction | None, best: tuple[float, int] | None, rule: PruneRule, looks: int = 1) -> PruneVerdict | None:
    """A verdict to prune, or None (go on). ``best`` = (the best complete trial's value, its number);
    ``looks``: how many checkpoints from ``min_step`` on a trial is judged at (the predictor's)."""
    if prediction is None or best is None or prediction.step < rule.min_step or prediction.se <= 0:
        return None
    threshold = best[0] + rule.margin
    probability = 1 - NormalDist(prediction.mean, prediction.se).cdf(threshold)
    if probability < 1 - (1 - rule.confidence) / max(1, looks):
        return None
    return PruneVerdict(prediction.step, prediction.mean, prediction.se, best[0], best[1], rule.margin, probability, rule.confidence,
                        prediction.fit.n, max(1, looks))  # fmt: skip


@dataclass(frozen=True)
class SlotFacts:
    trials: int  # made so far, any state
    open_trials: int
    max_trials: int
    max_parallel: int
    budget_gpu_hours: float | None
    committed_gpu_hours: float  # spent so far + what open trials' runs may still use
    trial_gpu_hours: float  # what one more trial may use (seeds x expected run time)


def slots(f: SlotFacts) -> tuple[int, str | None]:
    """(trials to start now, why not more: a limit that binds, or None)."""
    n = min(f.max_trials - f.trials, f.max_parallel - f.open_trials)
    why = None
    if f.trials >= f.max_trials:
        why = f"max_trials ({f.max_trials}) reached"
    if f.budget_gpu_hours is not None and f.trial_gpu_hours > 0:
        room = math.floor((f.budget_gpu_hours - f.committed_gpu_hours) / f.trial_gpu_hours + 1e-9)
        if room < n:
            n = room
            why = (f"GPU-hour budget: {f.committed_gpu_hours:.2f} of {f.budget_gpu_hours:g} spent or committed, "
                   f"a trial may use {f.trial_gpu_hours:.2f}")  # fmt: skip
    return max(0, n), why
