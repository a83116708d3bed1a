"""Finished training curves for the predictor: the public records' logs and a team's runs (I/O).

A record folder holds one log per seed; each log is one curve, its folder its group. The
records are read once per process (they do not change while caddie runs).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Metric, Run
from service.runs.logparse import parse_script_log
from service.sweeps.predictor import Curve


def record_curve(path: Path) -> Curve | None:
    """One record log's train-loss curve and final score; None without a finite final or a train curve."""
    points, summary = parse_script_log(path.read_text(encoding="utf-8", errors="replace"))
    final = summary.final
    train = tuple((p.step, p.train_loss) for p in points if p.kind == "train" and p.train_loss is not None and p.step > 0)
    if final is None or not train or not (math.isfinite(final.val_bpb) and math.isfinite(final.val_loss)) or final.val_loss <= 0:
        return None
    return Curve(source=f"record:{path.parent.name}/{path.name}", group=f"record:{path.parent.name}", points=train,
                 bpb_per_nat=final.val_bpb / final.val_loss, final_bpb=final.val_bpb)  # fmt: skip


@functools.lru_cache(maxsize=4)
def record_curves(root: Path) -> tuple[Curve, ...]:
    """Every record log's curve under ``root`` (CADDIE_RECORDS_DIR; empty if the folder is not there)."""
    if not root.is_dir():
        return ()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for log in sorted(folder.glob("*.log")):
            curve = record_curve(log)
            if curve is not None:
                out.append(curve)
    return tuple(out)


def run_points(session: Session, run_ids: list[int]) -> dict[int, list[tuple[int, float]]]:
    """Train-loss points by run, latest attempt's points winning at a step."""
    out: dict[int, dict[int, float]] = {r: {} for r in run_ids}
    if not run_ids:
        return {}
    rows = session.execute(
        select(Metric.run_id, Metric.step, Metric.train_loss)
        .where(Metric.run_id.in_(run_ids), Metric.kind == "train", Metric.train_loss.is_not(None), Metric.step > 0)
        .order_by(Metric.run_id, Metric.attempt, Metric.step)
    ).all()
    for run_id, step, loss in rows:
        if loss is not None:  # the query asks for train points with a loss
            out[run_id][step] = float(loss)
    return {r: sorted(p.items()) for r, p in out.items()}


def team_curves(session: Session, team_id: int, limit: int = 500) -> list[Curve]:
    """The team's latest SUCCEEDED shared-trainer runs with a final val_bpb and val_loss, as curves."""
    runs = session.execute(
        select(Run.id, Run.group_key, Run.val_bpb, Run.val_loss)
        .where(Run.team_id == team_id, Run.status == "SUCCEEDED", Run.val_bpb.is_not(None), Run.val_loss > 0)
        .order_by(Run.id.desc()).limit(limit)
    ).all()  # fmt: skip
    points = run_points(session, [r.id for r in runs])
    return [Curve(source=f"run:{r.id}", group=f"group:{r.group_key}", points=tuple(points.get(r.id, ())),
                  bpb_per_nat=r.val_bpb / r.val_loss, final_bpb=r.val_bpb)  # fmt: skip
            for r in runs if points.get(r.id)]
