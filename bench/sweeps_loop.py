"""caddie's own sweep loop on a synthetic objective whose optimum is known: TPE with pruning
against the full grid, through the real code path (service.sweeps.store on a SQLite database:
trials submitted by submit_runs, pruned through the cancel path), with the runs simulated.

The objective (val_bpb of a trial): 1.10 + 0.02·ln(MATRIX_LR/0.04)² + 0.004·(NUM_LAYERS−11)²
+ N(0, 0.001) per seed; the grid (8 log-spaced LRs x 5 depths) holds its optimum's neighbour.
A run takes 5,000 steps over 10 ticks and logs its train loss every 100 steps. Its curve is
drawn so that the predictor (fitted on the public records) reads it with the error it has on
the records: x_k = (final − a_k)/b_k + N(0, s_k)/b_k at each checkpoint k. GPU-hours count the
steps a run took (8 GPUs x 600 s for a full run). Runs are simulated; nothing trains here.

    .venv/bin/python bench/sweeps_loop.py [--repeats 3] [--out bench/results/sweeps_loop.md]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select, update  # noqa: E402

from service.core.db import get_sessionmaker  # noqa: E402
from service.core.migrate import upgrade  # noqa: E402
from service.core.models import Metric, Run, Sweep, SweepTrial, utcnow  # noqa: E402
from service.core.settings import Settings, get_settings  # noqa: E402
from service.sweeps import store  # noqa: E402
from service.sweeps.curves import record_curves  # noqa: E402
from service.sweeps.predictor import Predictor  # noqa: E402
from service.sweeps.schemas import SweepCreate  # noqa: E402
from service.teams import accounts  # noqa: E402
from service.teams.tokens import load_principal  # noqa: E402

STEPS, PER_TICK, LOG_EVERY, BPB_PER_NAT = 5000, 500, 100, 0.6
FULL_RUN_GPU_H = 8 * 600 / 3600
SPACE = {"MATRIX_LR": {"low": 0.005, "high": 0.2, "log": True, "steps": 8}, "NUM_LAYERS": {"values": [9, 10, 11, 12, 13]}}


def objective(params: dict) -> float:
    return 1.10 + 0.02 * math.log(params["MATRIX_LR"] / 0.04) ** 2 + 0.004 * (params["NUM_LAYERS"] - 11) ** 2


def curve(final: float, lines: Predictor, rng: random.Random) -> dict[int, float]:
    """Train loss (nats) at every logged step: at checkpoint k's window the line's x for ``final``, with its residual noise.
    A run's deviation from the line persists from one checkpoint to the next (correlation 0.8), as a curve's does."""
    xs = {}
    persistent = rng.gauss(0, 1)
    for k, fit in sorted(lines.fits.items()):
        z = math.sqrt(0.8) * persistent + math.sqrt(0.2) * rng.gauss(0, 1)
        xs[k] = (final + fit.resid_std * z - fit.a) / fit.b
    out = {}
    for s in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        k = min((k for k in xs if k >= s), default=max(xs))
        out[s] = xs[k] / BPB_PER_NAT
    return out


def run_sweep(body: dict, seed: int, records: tuple, lines: Predictor) -> dict[str, float]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/caddie.db"
        upgrade(url)
        settings = Settings(home=Path(tmp), database_url=url)
        session = get_sessionmaker(url)()
        team = accounts.create_team(session, "golfers")
        user = accounts.create_user(session, "ann")
        accounts.add_member(session, team, user)
        session.commit()
        sweep = store.create_sweep(session, load_principal(session, user), SweepCreate(**body, sampler_seed=seed), settings)
        progress: dict[int, int] = {}
        finals: dict[int, float] = {}
        curves: dict[int, dict[int, float]] = {}
        for _ in range(400):
            session.expire_all()
            store.advance_sweeps(session, settings, records=records)
            session.expire_all()
            if session.get_one(Sweep, sweep.id).status == "done":
                break
            for run in session.scalars(select(Run).where(Run.status.in_(("QUEUED", "RUNNING")))).all():
                if run.id not in progress:
                    progress[run.id] = 0
                    finals[run.id] = objective(run.spec | {"NUM_LAYERS": run.spec.get("NUM_LAYERS", 11)}) + rng.gauss(0, 0.001)
                    curves[run.id] = curve(finals[run.id], lines, rng)
                    session.execute(update(Run).where(Run.id == run.id).values(status="RUNNING", started_at=utcnow()))
                if run.cancel_requested_at is not None:
                    session.execute(update(Run).where(Run.id == run.id).values(status="CANCELLED", finished_at=utcnow()))
                    continue
                old, progress[run.id] = progress[run.id], progress[run.id] + PER_TICK
                session.add_all([Metric(run_id=run.id, kind="train", step=s, train_loss=curves[run.id][s], attempt=1)
                                 for s in range(old + LOG_EVERY, progress[run.id] + 1, LOG_EVERY)])  # fmt: skip
                if progress[run.id] >= STEPS:
                    session.execute(update(Run).where(Run.id == run.id).values(status="SUCCEEDED", val_bpb=finals[run.id],
                                                                               val_loss=finals[run.id] / BPB_PER_NAT, finished_at=utcnow()))  # fmt: skip
            session.commit()
        trials = session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id)).all()
        complete = [t for t in trials if t.status == "complete"]
        best = min(complete, key=lambda t: t.value)  # type: ignore[arg-type,return-value]
        session.close()
        return {"trials": len(trials), "pruned": sum(t.status == "pruned" for t in trials), "gpu_h": sum(progress.values()) / STEPS * FULL_RUN_GPU_H,
                "best_true": objective(best.params), "best": best.params}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    records = record_curves(get_settings().records_dir)
    lines = Predictor.fit(records)
    grid_points = [dict(zip(("MATRIX_LR", "NUM_LAYERS"), (lr, n))) for lr in [0.005 * (40 ** (i / 7)) for i in range(8)] for n in range(9, 14)]
    optimum = min(objective(p) for p in grid_points)
    base = {"name": "lr-depth", "track": "unlimited", "hardware": "H100:8", "space": SPACE, "seeds": [1], "max_parallel": 4}
    plans = [("grid, no pruning", {**base, "strategy": "grid", "max_trials": 40, "prune": None}),
             ("grid, pruning", {**base, "strategy": "grid", "max_trials": 40}),
             ("TPE, 20 trials, no pruning", {**base, "strategy": "tpe", "max_trials": 20, "prune": None}),
             ("TPE, 20 trials, pruning", {**base, "strategy": "tpe", "max_trials": 20})]  # fmt: skip
    lines_out = ["# caddie's sweep loop on a synthetic objective (runs simulated)", "",
                 f"`.venv/bin/python bench/sweeps_loop.py --repeats {args.repeats}`" , "",
                 "Objective 1.10 + 0.02·ln(MATRIX_LR/0.04)² + 0.004·(NUM_LAYERS−11)²; the grid is 8 log-spaced LRs in [0.005, 0.2] x depths 9-13 "
                 f"(40 points); its best point scores {optimum:.4f}. 4 trials at once, 1 seed per trial; pruning: the default rule "
                 "(margin 0.005, confidence 0.95, from step 500). Curves carry the predictor's own error on the records (a run's deviation persists across checkpoints, correlation 0.8).", "",
                 "| plan | repeat | trials | pruned | GPU-hours | best trial's true val_bpb | above the grid's best | best knobs |",
                 "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    summary = []
    for label, body in plans:
        outs = []
        for r in range(args.repeats):
            out = run_sweep(body, seed=r + 1, records=records, lines=lines)
            outs.append(out)
            knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in out["best"].items())
            lines_out.append(f"| {label} | {r + 1} | {out['trials']} | {out['pruned']} | {out['gpu_h']:.1f} | {out['best_true']:.4f} | "
                             f"{out['best_true'] - optimum:+.4f} | {knobs} |")  # fmt: skip
            print(lines_out[-1], flush=True)
        summary.append(f"| {label} | {sum(o['gpu_h'] for o in outs) / len(outs):.1f} | {sum(o['pruned'] for o in outs) / len(outs):.1f} | "
                       f"{sum(o['best_true'] - optimum for o in outs) / len(outs):+.4f} | {max(o['best_true'] - optimum for o in outs):+.4f} |")  # fmt: skip
    lines_out += ["", f"Means over {args.repeats} repeats:", "", "| plan | GPU-hours | trials pruned | above the grid's best: mean | worst |",
                  "|---|---|---|---|---|", *summary, "",
                  "Reading: TPE reaches the optimum's neighbourhood on half the grid's GPU-hours. Pruning saves less here than on the "
                  "records: the knobs move val_bpb by less than the predictor's error (~0.02 bpb), so only far-off trials are stopped; "
                  "and a pruned trial's predicted value, told to TPE, can steer it (repeats 2-3)."]  # fmt: skip
    text = "\n".join(lines_out) + "\n"
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
