"""Early abort: stop paying for a run that is clearly losing (opt-in per spec).

A spec's ``abort_if_behind: {step: 1000, margin: 0.02}`` means: when the run's
train loss at step 1000 arrives, compare it with the team's best run of the same
track and hardware at step 1000 (the lowest train loss logged at exactly that
step by one of the team's SUCCEEDED runs). If the run is behind by more than the
margin, it is stopped and marked ABORTED_BEHIND, with both figures in its event.

The margin is absolute, in nats of train loss (the trainer logs cross-entropy in
nats): behind means ``loss > best + margin``. A loss that is not a finite number
is behind. With no reference run (nothing succeeded yet at that step) the run
goes on.

What it saved: the run's expected node time (its time cap plus overhead,
service.queue.estimates) minus the node time its attempt had used,
stored in ``runs.saved_seconds`` and shown by the accounting as saved GPU-hours.

``judge``, ``loss_at`` and ``unlogged_step`` are pure; ``best_train_loss`` and ``saved_seconds`` read the database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.errors import Issue
from service.core.models import Metric, Run, RunEvent
from service.core.status import RunStatus
from service.queue.estimates import expected_seconds
from trainer.config import TrainerConfig


@dataclass(frozen=True)
class AbortRule:
    step: int
    margin: float  # nats of train loss

    @classmethod
    def of(cls, stored: Mapping[str, Any] | None) -> AbortRule | None:
        """The rule stored on a run (``runs.abort_if_behind``), or None."""
        if not stored:
            return None
        return cls(int(stored["step"]), float(stored["margin"]))


@dataclass(frozen=True)
class Behind:
    """A run found behind: the figures its ABORTED_BEHIND event carries."""

    step: int
    loss: float
    best_loss: float
    best_run_id: int
    margin: float

    @property
    def reason(self) -> str:
        return (f"aborted behind: train loss {self.loss:.4f} at step {self.step} is {self.loss - self.best_loss:+.4f} "
                f"from the team's best {self.best_loss:.4f} (run {self.best_run_id}) on this track and hardware, "
                f"more than the margin {self.margin:g}")  # fmt: skip


class Point(Protocol):
    kind: str
    step: int
    train_loss: float | None


def loss_at(rule: AbortRule, points: Iterable[Point]) -> float | None:
    """The train loss logged at the rule's step among ``points``, or None if it is not there."""
    return next((p.train_loss for p in points if p.kind == "train" and p.step == rule.step and p.train_loss is not None), None)


def judge(rule: AbortRule, loss: float, best: tuple[float, int] | None) -> Behind | None:
    """Behind (stop the run) if ``loss`` is worse than ``best`` = (its loss, its run id) by more than the margin."""
    if best is None:
        return None
    best_loss, best_run_id = best
    if math.isfinite(loss) and loss <= best_loss + rule.margin:
        return None
    return Behind(rule.step, loss, best_loss, best_run_id, rule.margin)


def unlogged_step(cfg: TrainerConfig, step: int) -> list[Issue]:
    """Issues if a trainer config never logs train loss at ``step`` (steps 1-10, every TRAIN_LOG_EVERY, and the last are logged)."""
    if step > cfg.iterations:
        return [Issue(("abort_if_behind", "step"), f"must be <= ITERATIONS ({cfg.iterations})", step)]
    if step <= 10 or step % cfg.train_log_every == 0 or step == cfg.iterations:
        return []
    below = step // cfg.train_log_every * cfg.train_log_every
    nearest = " or ".join(str(s) for s in (below, below + cfg.train_log_every) if 0 < s <= cfg.iterations)
    return [Issue(("abort_if_behind", "step"), f"the trainer logs train loss every {cfg.train_log_every} steps (TRAIN_LOG_EVERY): "
                                               f"choose a step it logs, e.g. {nearest}", step)]


# --- I/O -----------------------------------------------------------------------------------
def best_train_loss(session: Session, *, team_id: int, track: str, hardware: str, step: int, exclude_run: int) -> tuple[float, int] | None:
    """(lowest train loss at ``step``, its run id) among the team's SUCCEEDED runs on this track and hardware."""
    row = session.execute(
        select(Metric.train_loss, Metric.run_id)
        .join(Run, Run.id == Metric.run_id)
        .where(Run.team_id == team_id, Run.track == track, Run.hardware == hardware, Run.status == RunStatus.SUCCEEDED.value, Run.id != exclude_run,
               Metric.kind == "train", Metric.step == step, Metric.train_loss.is_not(None))
        .order_by(Metric.train_loss, Metric.run_id)
        .limit(1)
    ).first()  # fmt: skip
    return None if row is None else (float(row.train_loss), int(row.run_id))


def saved_seconds(session: Session, run: Run, overhead_s: float, now: datetime) -> float:
    """Node seconds an abort now saves: the run's expected time minus what its attempt used (from its last PROVISIONING)."""
    billed_from = session.scalar(select(func.max(RunEvent.at)).where(RunEvent.run_id == run.id, RunEvent.to_status == RunStatus.PROVISIONING.value))
    used = (now - (billed_from or run.started_at or now)).total_seconds()
    return max(0.0, expected_seconds(run.spec, overhead_s) - used)

