"""What the sweep pruner (service.sweeps) would have done on the public records' curves.

Each record log (one seed of one record folder) plays a trial. A simulated sweep draws
TRIALS folders at random (one seed each) and runs them one after another; before a trial
reaches its end, at each checkpoint the predictor has a line for, the pruning rule compares
its predicted final val_bpb with the best trial so far (by its true final). The predictor for
a trial is fitted on every other folder's curves (leave its folder out: no peeking).

Figures per rule (margin, confidence):
  GPU-hours: training time on 8 GPUs, full runs vs with pruning (eval time, also saved
             when a run stops early, is not counted: the saving is a floor);
  pruned:    share of trials stopped;
  false:     share of pruned trials that in truth ended within best-so-far + margin
             (the rule promises at most 1 - confidence under its model);
  lost best: share of sweeps whose best trial (by true final) was pruned, and the mean
             shortfall of the sweep's best then (bpb).
And the predictor's accuracy per checkpoint (leave one folder out).

    .venv/bin/python bench/sweeps_sim.py [--sweeps 400] [--trials 12] [--seed 0] [--out bench/results/sweeps.md]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sweeps_results import write_section  # noqa: E402
from service.core.settings import get_settings  # noqa: E402
from service.runs.logparse import parse_script_log  # noqa: E402
from service.sweeps.plan import PruneRule, judge_prune  # noqa: E402
from service.sweeps.predictor import Curve, Predictor, accuracy  # noqa: E402

GPUS = 8
RULES = [(0.0, 0.90), (0.0, 0.95), (0.0, 0.99), (0.005, 0.95)]


@dataclass(frozen=True)
class Trial:
    curve: Curve
    train_ms: dict[int, float]  # step -> training time at that step
    total_ms: float  # training time of the whole run


def load(root: Path) -> list[Trial]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for log in sorted(folder.glob("*.log")):
            points, summary = parse_script_log(log.read_text(encoding="utf-8", errors="replace"))
            final = summary.final
            train = [p for p in points if p.kind == "train" and p.train_loss is not None and p.step > 0]
            timed = [p for p in points if p.elapsed_ms]
            if final is None or not train or not timed or not (math.isfinite(final.val_bpb) and final.val_loss > 0):
                continue
            curve = Curve(f"{folder.name}/{log.name}", folder.name, tuple((p.step, p.train_loss) for p in train),
                          final.val_bpb / final.val_loss, final.val_bpb)  # type: ignore[arg-type]
            out.append(Trial(curve, {p.step: float(p.elapsed_ms) for p in timed}, max(float(p.elapsed_ms) for p in timed)))
    return out


def time_at(trial: Trial, step: int) -> float:
    """Training ms when the run logged ``step`` (the nearest logged step at or after it)."""
    after = [s for s in trial.train_ms if s >= step]
    return trial.train_ms[min(after)] if after else trial.total_ms


def draw(folders: list[str], size: int, mode: str, rng: random.Random) -> list[str]:
    """``size`` folders: any (mode "any"), or consecutive by date, shuffled ("near": records a few
    days apart differ by a few thousandths of a bpb, as the trials of one knob sweep do)."""
    if mode == "any":
        return rng.sample(folders, size)
    start = rng.randrange(len(folders) - size + 1)
    window = folders[start : start + size]
    rng.shuffle(window)
    return window


def simulate(trials: list[Trial], predictors: dict[str, Predictor], rule: PruneRule, sweeps: int, size: int, seed: int,
             mode: str = "any") -> dict[str, float]:  # fmt: skip
    by_folder: dict[str, list[Trial]] = {}
    for t in trials:
        by_folder.setdefault(t.curve.group, []).append(t)
    rng = random.Random(seed)
    full_h = pruned_h = 0.0
    n_trials = n_pruned = n_false = lost = 0
    shortfall = []
    for _ in range(sweeps):
        picked = [rng.choice(by_folder[f]) for f in draw(sorted(by_folder), size, mode, rng)]
        best: tuple[float, int] | None = None
        kept = []
        true_best = min(t.curve.final_bpb for t in picked)  # type: ignore[type-var]
        pruned_best = False
        for i, t in enumerate(picked):
            n_trials += 1
            full_h += GPUS * t.total_ms / 3.6e6
            stop_ms = t.total_ms
            predictor = predictors[t.curve.group]
            for k in sorted(predictor.fits):
                pred = predictor.predict([(s, x) for s, x in t.curve.points if s <= k], t.curve.bpb_per_nat)
                if pred is None or pred.step != k:
                    continue
                verdict = judge_prune(pred, best, rule, looks=sum(k >= rule.min_step for k in predictor.fits))
                if verdict is not None:
                    stop_ms = time_at(t, k)
                    n_pruned += 1
                    n_false += t.curve.final_bpb <= best[0] + rule.margin  # type: ignore[operator,index]
                    pruned_best |= t.curve.final_bpb == true_best
                    break
            pruned_h += GPUS * stop_ms / 3.6e6
            if stop_ms == t.total_ms:
                kept.append(t.curve.final_bpb)
                if best is None or t.curve.final_bpb < best[0]:  # type: ignore[operator]
                    best = (t.curve.final_bpb, i)  # type: ignore[assignment]
        lost += pruned_best
        shortfall.append(min(kept) - true_best)  # type: ignore[type-var,operator]
    return {"full_h": full_h / sweeps, "pruned_h": pruned_h / sweeps, "pruned": n_pruned / n_trials,
            "false": n_false / n_pruned if n_pruned else 0.0, "n_pruned": n_pruned, "lost": lost / sweeps,
            "shortfall": statistics.fmean(shortfall), "worst": max(shortfall)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=400)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    records_dir = get_settings().records_dir  # CADDIE_RECORDS_DIR, filled in when the settings load
    assert records_dir is not None
    trials = load(records_dir)
    folders = sorted({t.curve.group for t in trials})
    predictors = {f: Predictor.fit([t.curve for t in trials if t.curve.group != f]) for f in folders}
    lines = [
        "## Sweep pruning on the public records' curves", "",
        f"`.venv/bin/python bench/sweeps_sim.py --sweeps {args.sweeps} --trials {args.trials} --seed {args.seed}"
        + (f" --out {args.out}`" if args.out else "`"), "",
        f"{len(trials)} record logs (seeds) in {len(folders)} record folders of `track_10min_16mb`. Feature: mean train loss over "
        "(0.8k, k] times val_bpb/val_loss (the tokenizer's bytes per token); target: the log's final val_bpb.", "",
        "### Predictor accuracy (leave one record folder out)", "",
        "| step k | logs | folders | corr(x_k, final) | RMSE bpb | MAE bpb | residual std | in ±1.96 s.e. |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for a in accuracy([t.curve for t in trials]):
        lines.append(f"| {a.step} | {a.n} | {a.groups} | {a.correlation:.3f} | {a.rmse:.4f} | {a.mae:.4f} | {a.resid_std:.4f} | {a.coverage:.0%} |")
    for mode, title in (("any", "record folders drawn at random from all 42"),
                        ("near", "a window of consecutive record folders by date, shuffled: a narrow spread, as in one knob sweep")):
        lines += ["", f"### Simulated sweeps ({mode}): {args.sweeps} sweeps of {args.trials} trials, {title}; one seed each, run in turn", "",
                  "| margin | confidence | GPU-h / sweep, full | with pruning | saved | trials pruned | pruned but within best+margin "
                  "| sweeps whose best trial was pruned | shortfall of the sweep's best: mean, worst (bpb) |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for margin, confidence in RULES:
            rule = PruneRule(margin=margin, confidence=confidence, min_step=500)
            r = simulate(trials, predictors, rule, args.sweeps, args.trials, args.seed, mode)
            saved = 1 - r["pruned_h"] / r["full_h"]
            lines.append(f"| {margin:g} | {confidence:g} | {r['full_h']:.2f} | {r['pruned_h']:.2f} | {saved:.0%} | {r['pruned']:.0%} | "
                         f"{r['false']:.1%} of {r['n_pruned']} | {r['lost']:.1%} | {r['shortfall']:.5f}, {r['worst']:.5f} |")  # fmt: skip
    lines += ["", "### Reading", "",
              "- The 95 % prediction interval holds: 91-100 % of left-out finals fall inside it at each step; correlation 0.83-0.92, "
              "error ~0.02 bpb. That interval is wide next to a knob's effect, so the pruner stops only clear losers.",
              "- A trial is judged at every checkpoint it passes (6 looks from step 500), so each look asks for 1 - (1 - confidence)/looks "
              "(Bonferroni): the confidence holds for the trial, not for one look. Judged at the bare confidence on each look (this "
              "code's first version), margin 0 at 0.90 pruned trials that ended within the best in 7 % of cases and lost the "
              "sweep's best trial in 20-41 % of sweeps; with the correction no setting here pruned one that ended within best + margin.",
              "- The default rule (service/sweeps/schemas.py PruneSpec) is margin 0.005, confidence 0.95.",
              "- Not counted: evaluation time of a pruned run (also saved), and node overhead; trials here run one after another "
              "with the best so far known, while a sweep with trials at once has less to compare against early on.",
              "- The records are a history of improvements, not one team's sweep: their spread is wider than a knob sweep's "
              "(the `near` table narrows it). A team's own finished runs join the fit in caddie and should tighten it."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_section(args.out, "sweeps_sim", text)


if __name__ == "__main__":
    main()
