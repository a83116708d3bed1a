"""How a sweep picks its next trial: grid, random, or Bayesian through Optuna's TPE.

``propose(strategy, space, history, seed=...)`` returns the next trial's knob values, or
None when the strategy has nothing left (a grid that is done). Pure: the history is
passed in, nothing is kept between calls.

TPE uses Optuna's ask/tell API on an in-memory storage, rebuilt from ``history`` on every
call. Why not an RDB storage: caddie's sweep_trials table is already the durable record
of every trial (params, state, value), written in the same transactions as the runs; a
second copy in Optuna's own tables would have to be kept in step with it (and migrated
with Optuna's schema). Rebuilding a study of a few hundred trials costs milliseconds,
and a seed derived from the sweep and the trial count makes each proposal reproducible.
Running trials go in as RUNNING, so with ``constant_liar`` parallel asks spread out.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.sweeps.space import Knob, SearchSpace

STRATEGIES = ("grid", "random", "tpe")
TPE_STARTUP_TRIALS = 5  # random trials before TPE models the history (Optuna's default is 10; sweeps are short)


@dataclass(frozen=True)
class Observed:
    """A trial so far: its knob values, its state, and its value (final val_bpb, lower is better).

    state: "running" (no value yet), "complete" (value = its mean val_bpb), "pruned", "failed" (no value).
    A trial the curve pruner stopped has a value: its predicted final val_bpb, on the objective's own
    scale, so TPE is told it as a complete trial of that value. One the median pruner stopped has
    none, only ``last``: (step, train loss) where it was stopped; TPE is told it as PRUNED with that
    intermediate value (Optuna ranks pruned trials after every complete one), never as failed, which
    TPE would ignore and so propose the same region again.
    """

    params: dict[str, Any]
    state: str
    value: float | None = None
    last: tuple[int, float] | None = None


def propose(strategy: str, space: SearchSpace, history: Sequence[Observed], *, seed: int) -> dict[str, Any] | None:
    if strategy == "grid":
        return _grid_next(space, history)
    if strategy == "random":
        return _random_point(space, random.Random(f"{seed}:{len(history)}"))
    if strategy == "tpe":
        return _tpe_next(space, history, seed=seed + len(history))
    raise ValueError(f"unknown strategy {strategy!r}")


def _grid_next(space: SearchSpace, history: Sequence[Observed]) -> dict[str, Any] | None:
    tried = [h.params for h in history]
    return next((p for p in space.grid() if p not in tried), None)


def _random_value(knob: Knob, rng: random.Random) -> Any:
    if knob.values is not None:
        return rng.choice(knob.values)
    assert knob.low is not None and knob.high is not None
    if knob.kind == "int":
        if knob.log:
            return min(int(knob.high), max(int(knob.low), int(round(math.exp(rng.uniform(math.log(knob.low), math.log(knob.high)))))))
        return rng.randint(int(knob.low), int(knob.high))
    if knob.log:
        return math.exp(rng.uniform(math.log(knob.low), math.log(knob.high)))
    return rng.uniform(knob.low, knob.high)


def _random_point(space: SearchSpace, rng: random.Random) -> dict[str, Any]:
    return {k.name: _random_value(k, rng) for k in space.knobs}


def distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna's distribution for each knob."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for k in space.knobs:
        if k.values is not None:
            out[k.name] = CategoricalDistribution(list(k.values))
        elif k.kind == "int":
            out[k.name] = IntDistribution(int(k.low or 0), int(k.high or 0), log=k.log)
        else:
            out[k.name] = FloatDistribution(float(k.low or 0.0), float(k.high or 0.0), log=k.log)
    return out


def _tpe_next(space: SearchSpace, history: Sequence[Observed], *, seed: int) -> dict[str, Any]:
    import optuna

    with warnings.catch_warnings():  # multivariate TPE is marked experimental; it models knobs jointly, which sweeps want
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, constant_liar=True, multivariate=True)
    trial = tpe_study(space, history, sampler).ask(distributions(space))
    return dict(trial.params)


def tpe_study(space: SearchSpace, history: Sequence[Observed], sampler: Any = None) -> Any:
    """An in-memory Optuna study holding ``history`` as TPE is told it (see ``Observed``)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(space)
    study = optuna.create_study(direction="minimize", sampler=sampler, storage=optuna.storages.InMemoryStorage())
    for h in history:
        if not space.contains(h.params):
            continue  # a trial from before a space change cannot be told
        if h.state in ("complete", "pruned") and h.value is not None and math.isfinite(h.value):
            study.add_trial(create_trial(params=h.params, distributions=dists, value=h.value))
        elif h.state == "pruned":
            steps = {h.last[0]: h.last[1]} if h.last is not None and math.isfinite(h.last[1]) else {}
            study.add_trial(create_trial(params=h.params, distributions=dists, state=TrialState.PRUNED, intermediate_values=steps))
        elif h.state == "running":
            study.add_trial(create_trial(params=h.params, distributions=dists, state=TrialState.RUNNING))
        else:
            study.add_trial(create_trial(params=h.params, distributions=dists, state=TrialState.FAIL))
    return study


def knob_importance(space: SearchSpace, history: Sequence[Observed]) -> dict[str, float] | None:
    """Optuna's PED-ANOVA importance of each knob (how much it tells the best trials from the rest; sums to 1),
    or None with fewer than 3 valued trials. PED-ANOVA, not fANOVA: fANOVA needs scikit-learn, which caddie does not install."""
    import optuna
    from optuna.trial import create_trial

    valued = [h for h in history if h.state in ("complete", "pruned") and h.value is not None and math.isfinite(h.value) and space.contains(h.params)]
    if len(valued) < 3 or len(space.knobs) < 2:
        return {space.knobs[0].name: 1.0} if len(valued) >= 3 else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(space)
    study = optuna.create_study(direction="minimize", storage=optuna.storages.InMemoryStorage())
    for h in valued:
        study.add_trial(create_trial(params=h.params, distributions=dists, value=h.value))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ImportError):  # e.g. every trial has the same value
        return None
    return {k: round(float(v), 4) for k, v in found.items()}
