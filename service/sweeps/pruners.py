"""Optuna's pruners where they fit a sweep (pure; service.sweeps.store does the I/O).

A sweep's ``pruner``: "curve" (caddie's own, service.sweeps.plan.judge_prune: the predicted final
val_bpb against the best trial's, at a stated confidence), "median" (Optuna's MedianPruner:
a trial whose best train loss so far is worse than the median of the complete trials' losses at
the same step), or "none". The median pruner needs no fitted curves and no finished val_bpb, only
a few complete trials; it says nothing about the final score, so a trial it prunes has no value.

Optuna compares intermediate values at one step. caddie's trials log their train loss at steps
of their own (the same for one config, not always across configs), so each complete trial's
curve is read at the live trial's last step by linear interpolation between its two nearest
points; a complete trial whose curve does not span that step is left out of the median.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

PRUNERS = ("curve", "median", "none")
Points = Sequence[tuple[int, float]]


def at_step(points: Points, step: int) -> float | None:
    """The curve's value at ``step`` (linear between its nearest points); None outside its steps."""
    if not points or step < points[0][0] or step > points[-1][0]:
        return None
    steps = [s for s, _ in points]
    i = bisect.bisect_left(steps, step)
    if steps[i] == step:
        return points[i][1]
    (s0, v0), (s1, v1) = points[i - 1], points[i]
    return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


@dataclass(frozen=True)
class MedianVerdict:
    step: int
    trial_loss: float  # the live trial's best train loss up to ``step``
    median_loss: float  # the median of the complete trials' train loss at ``step``
    compared: int  # complete trials whose curves span ``step``
    min_step: int
    startup_trials: int

    @property
    def reason(self) -> str:
        return (f"pruned by Optuna's MedianPruner at step {self.step}: best train loss so far {self.trial_loss:.4f} is worse than "
                f"the median {self.median_loss:.4f} of {self.compared} complete trial(s) at that step (from step {self.min_step}, "
                f"after {self.startup_trials} complete trials)")  # fmt: skip

    def to_json(self) -> dict[str, float | int | str]:
        return {"pruner": "median", "step": self.step, "trial_loss": self.trial_loss, "median_loss": self.median_loss,
                "compared": self.compared, "min_step": self.min_step, "startup_trials": self.startup_trials}  # fmt: skip


def judge_median(live: Points, complete: Sequence[Points], *, min_step: int, startup_trials: int) -> MedianVerdict | None:
    """A verdict to prune the trial whose curve so far is ``live`` (steps ascending), or None (go on).

    ``complete``: the complete trials' curves (same tokenizer: train losses in nats per token only
    compare within one). Optuna decides; this only feeds it one in-memory study."""
    import optuna  # only sweeps that choose this pruner pay for the import

    live = [(s, v) for s, v in live if math.isfinite(v)]
    if not live:
        return None
    step = live[-1][0]
    values = [v for v in (at_step(c, step) for c in complete) if v is not None and math.isfinite(v)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=min_step)
    study = optuna.create_study(direction="minimize", pruner=pruner, storage=optuna.storages.InMemoryStorage())
    # Every complete trial counts towards startup_trials, spanning the step or not (as in Optuna).
    for c in complete:
        value = at_step(c, step)
        final = c[-1][1] if c else 0.0
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=final,
                                                  intermediate_values={step: value} if value is not None and math.isfinite(value) else {}))  # fmt: skip
    frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, intermediate_values=dict(live))
    if not pruner.prune(study, frozen):
        return None
    return MedianVerdict(step, min(v for _, v in live), _median(values), len(values), min_step, startup_trials)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
