"""The pure parts of sweeps: the space against trainer.config, the strategies, the pruning rule, the slots."""

from __future__ import annotations

import math

import pytest

from service.core.errors import InvalidInput
from service.sweeps.plan import COMPLETE, FAILED, PruneRule, SlotFacts, judge_prune, slots, trial_end
from service.sweeps.predictor import Curve, Predictor
from service.sweeps.space import parse_space
from service.sweeps.strategies import Observed, knob_importance, propose

SPACE = {"MATRIX_LR": {"low": 0.005, "high": 0.2, "log": True, "steps": 8}, "NUM_LAYERS": {"values": [6, 7, 8, 9, 10, 11, 12, 13]}}


SEED_STACK = {"STACK": "2026-03-23"}  # the stack these spaces are written for (XSA on the last 4 layers, no loops): not the default


def space(raw=SPACE, base=None):  # noqa: ANN001, ANN201
    return parse_space(raw, {**SEED_STACK, **(base or {})})


def test_grid_enumerates_every_point_once_then_stops() -> None:
    s = space()
    history: list[Observed] = []
    while (p := propose("grid", s, history, seed=0)) is not None:
        history.append(Observed(p, "complete", 1.0))
    assert len(history) == 64 == s.grid_size()
    assert len({tuple(sorted(h.params.items())) for h in history}) == 64
    lrs = sorted({h.params["MATRIX_LR"] for h in history})
    assert lrs[0] == 0.005 and lrs[-1] == 0.2 and len(lrs) == 8
    assert math.isclose(lrs[1] / lrs[0], lrs[2] / lrs[1], rel_tol=1e-3)  # log-spaced


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_random_and_tpe_propose_inside_the_space(strategy: str) -> None:
    s = space({"MATRIX_LR": {"low": 0.005, "high": 0.2, "log": True}, "WARMDOWN_ITERS": {"low": 100, "high": 4000},
               "MLP_ACTIVATION": {"values": ["relu2", "leaky_relu2"]}})  # fmt: skip
    history: list[Observed] = []
    for i in range(12):
        p = propose(strategy, s, history, seed=3)
        assert p is not None and s.contains(p), p
        assert isinstance(p["WARMDOWN_ITERS"], int)
        history.append(Observed(p, "complete", p["MATRIX_LR"] + i * 1e-3))


def _objective(p: dict) -> float:
    """A synthetic val_bpb with its optimum at MATRIX_LR=0.04, NUM_LAYERS=11 (both on the grid's neighbourhood)."""
    return 1.10 + 0.02 * (math.log(p["MATRIX_LR"] / 0.04)) ** 2 + 0.004 * (p["NUM_LAYERS"] - 11) ** 2


def _trials_to_reach(strategy: str, target: float, seed: int, limit: int = 64) -> int:
    s, history = space(), []
    for n in range(1, limit + 1):
        p = propose(strategy, s, history, seed=seed)
        if p is None:
            return limit + 1
        value = _objective(p)
        history.append(Observed(p, "complete", value))
        if value <= target:
            return n
    return limit + 1


def test_tpe_finds_the_known_optimum_in_fewer_trials_than_grid() -> None:
    best_on_grid = min(_objective(p) for p in space().grid())
    target = best_on_grid + 0.002
    grid = _trials_to_reach("grid", target, seed=0)
    tpe = [_trials_to_reach("tpe", target, seed=s) for s in (1, 2, 3)]
    assert grid <= 64
    assert sum(tpe) / len(tpe) < grid, (tpe, grid)


def test_knob_importance_names_the_knob_that_moves_the_value() -> None:
    s, history = space(), []
    for p in s.grid()[::3]:
        history.append(Observed(p, "complete", 1.1 + 0.05 * p["NUM_LAYERS"] + 1e-4 * p["MATRIX_LR"]))
    importance = knob_importance(s, history)
    assert importance is not None and importance["NUM_LAYERS"] > 0.9
    assert knob_importance(s, history[:2]) is None


def test_space_is_checked_against_the_trainers_bounds() -> None:
    with pytest.raises(InvalidInput) as exc:
        space({"NUM_LAYERS": {"low": 2, "high": 99}, "MATRIX_LR": {"low": -1, "high": 0.1, "log": True}, "NOPE": {"values": [1]},
               "SEED": {"values": [1, 2]}, "MLP_ACTIVATION": {"low": 0, "high": 1}, "NUM_HEADS": {"values": [8, 7]}})  # fmt: skip
    issues = {".".join(map(str, i.loc)): i.msg for i in exc.value.issues}
    assert "must be <= 64" in issues["space.NUM_LAYERS.high"]
    assert "log range must have low > 0" in issues["space.MATRIX_LR.low"]
    assert issues["space.NOPE"].startswith("unknown knob")
    assert "seeds" in issues["space.SEED.values.0"]
    assert "list its values" in issues["space.MLP_ACTIVATION"]
    assert "must divide MODEL_DIM" in issues["space.NUM_HEADS.values.1"]
    with pytest.raises(InvalidInput) as exc:
        space({"NUM_LAYERS": {"values": [9, 10]}}, base={"NUM_LAYERS": 11})
    assert "also set in base" in str(exc.value)
    # A base without STACK is the default stack (2026-04-27: XSA on the last 11 layers): fewer layers break its cross-knob rule.
    with pytest.raises(InvalidInput) as exc:
        parse_space({"NUM_LAYERS": {"values": [11, 9]}}, {})
    issues = {".".join(map(str, i.loc)): i.msg for i in exc.value.issues}
    assert list(issues) == ["space.NUM_LAYERS.values.1"] and "XSA_LAST_N must be <= NUM_LAYERS=9" in issues["space.NUM_LAYERS.values.1"]


def test_trial_end_waits_for_every_run_and_means_the_successes() -> None:
    assert trial_end([("SUCCEEDED", 1.2), ("RUNNING", None)]) is None
    end = trial_end([("SUCCEEDED", 1.2), ("SUCCEEDED", 1.1), ("FAILED", None)])
    assert end is not None and end.status == COMPLETE and math.isclose(end.value or 0, 1.15)
    end = trial_end([("CANCELLED", None)])
    assert end is not None and end.status == FAILED


def _line_curves() -> list[Curve]:
    """final = 0.5 + 0.5·x exactly, plus a known ±0.01 wobble: residual std ≈ 0.0104."""
    out = []
    for i in range(20):
        x = 1.2 + 0.02 * i
        final = 0.5 + 0.5 * x + (0.01 if i % 2 else -0.01)
        out.append(Curve(f"c{i}", f"g{i}", tuple((s, x) for s in range(100, 2001, 100)), 1.0, final))
    return out


def test_prune_rule_uses_the_prediction_interval() -> None:
    predictor = Predictor.fit(_line_curves(), checkpoints=(1000,))
    fit = predictor.fits[1000]
    assert math.isclose(fit.b, 0.5, abs_tol=0.02) and 0.009 < fit.resid_std < 0.012
    near = predictor.predict([(s, 1.40) for s in range(100, 1001, 100)], 1.0)  # predicts 1.20
    far = predictor.predict([(s, 1.50) for s in range(100, 1001, 100)], 1.0)  # predicts 1.25
    assert near is not None and far is not None
    best = (1.195, 4)
    assert judge_prune(near, best, PruneRule(margin=0.0, confidence=0.95)) is None
    verdict = judge_prune(far, best, PruneRule(margin=0.0, confidence=0.95))
    assert verdict is not None and verdict.probability > 0.95 and verdict.best_trial == 4
    assert "predicted final val_bpb 1.25" in verdict.reason
    assert judge_prune(far, best, PruneRule(margin=0.05, confidence=0.95)) is None
    assert judge_prune(far, best, PruneRule(min_step=1500)) is None
    assert predictor.predict([(s, 1.5) for s in range(100, 901, 100)], 1.0) is None  # before the first checkpoint


def test_slots_keep_to_parallelism_trials_and_budget() -> None:
    f = SlotFacts(trials=3, open_trials=1, max_trials=10, max_parallel=4, budget_gpu_hours=None, committed_gpu_hours=0, trial_gpu_hours=1.5)
    assert slots(f) == (3, None)
    n, why = slots(SlotFacts(3, 1, 10, 4, budget_gpu_hours=6.0, committed_gpu_hours=3.5, trial_gpu_hours=1.5))
    assert n == 1 and why is not None and "budget" in why
    assert slots(SlotFacts(10, 0, 10, 4, None, 0, 1.5))[0] == 0


def test_a_failing_advance_never_breaks_the_scheduler_tick() -> None:
    from service.sweeps.store import advance_sweeps_safely

    def broken_factory():  # noqa: ANN202
        raise RuntimeError("database gone")

    advance_sweeps_safely(broken_factory)  # logged, not raised


def test_tpe_is_told_a_median_pruned_trial_as_pruned_and_avoids_its_region() -> None:
    from optuna.trial import TrialState

    from service.sweeps.strategies import tpe_study

    s = space({"MLP_ACTIVATION": {"values": ["relu2", "leaky_relu2"]}, "NUM_LAYERS": {"values": [9, 10, 11, 12]}})
    good = [Observed({"MLP_ACTIVATION": "relu2", "NUM_LAYERS": n}, "complete", 1.20 + 0.01 * i) for i, n in enumerate([9, 10, 11])]
    curve_pruned = Observed({"MLP_ACTIVATION": "relu2", "NUM_LAYERS": 12}, "pruned", 1.31)  # the curve pruner's predicted final val_bpb
    median_pruned = [Observed({"MLP_ACTIVATION": "leaky_relu2", "NUM_LAYERS": n}, "pruned", None, (700, 2.8)) for n in (9, 10, 11, 12)]
    told = tpe_study(s, [*good, curve_pruned, *median_pruned]).trials
    assert [t.state for t in told] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 4
    assert told[3].value == 1.31 and all(t.intermediate_values == {700: 2.8} and t.value is None for t in told[4:])
    # Told as pruned, TPE ranks them below every complete trial and keeps away; told as failed it ignored them.
    picks = [propose("tpe", s, [*good, *median_pruned], seed=k)["MLP_ACTIVATION"] for k in range(40)]
    as_failed = [Observed(o.params, "failed") for o in median_pruned]
    blind = [propose("tpe", s, [*good, *as_failed], seed=k)["MLP_ACTIVATION"] for k in range(40)]
    assert picks.count("leaky_relu2") <= 4 < 12 <= blind.count("leaky_relu2"), (picks.count("leaky_relu2"), blind.count("leaky_relu2"))


def test_a_trials_vocabulary_is_its_stacks_when_its_knobs_leave_it_out() -> None:
    # The pruners compare a trial only with trials of the same VOCAB_SIZE; a stored base is canonical and
    # leaves out its stack's default: 8192 under the default stack (2026-04-27), 1024 under 2026-03-23.
    from service.core.models import Sweep, SweepTrial
    from service.sweeps.store import _vocab

    def vocab(base: dict, params: dict) -> object:
        return _vocab(Sweep(spec={"base": base}), SweepTrial(params=params))

    assert vocab({}, {"MATRIX_LR": 0.03}) == 8192 and vocab({"STACK": "2026-03-23"}, {"NUM_LAYERS": 10}) == 1024
    assert vocab({}, {"STACK": "2026-03-23"}) == 1024  # a searched STACK
    assert vocab({"STACK": "2026-04-27"}, {"VOCAB_SIZE": 4096}) == 4096 and vocab({"STACK": "2026-03-23"}, {"NUM_HEADS": 7}) is None
