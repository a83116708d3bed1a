"""Early abort end to end: the real executor, the local launcher and the real trainer on CPU,
on PostgreSQL. A run whose train loss at its rule's step is behind the team's best run at that
step by more than the margin is stopped and marked ABORTED_BEHIND with both figures; the node
time it saved shows in the accounting. Plus the pure decision."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from service.billing.accounting import load_team_runs, usage_report
from service.core.db import get_sessionmaker
from service.core.models import Metric, Run, RunEvent, Team, User, utcnow
from service.core.settings import Settings
from service.core.storage import LocalArtifactStore
from service.queue.estimates import expected_seconds
from service.runs.early_abort import AbortRule, judge, loss_at, unlogged_step
from service.runs.logparse import MetricPoint
from service.teams.accounts import create_team, create_user
from tests.e2e.conftest import TINY
from tests.factories import add_queued_run
from tests.fresh_db import fresh_database
from trainer.config import TrainerConfig
from worker.launchers.local import LocalLauncher
from worker.run.executor import execute_run

STEP = 5
LOSING = {"MATRIX_LR": 0.0, "SCALAR_LR": 0.0, "TIED_EMBED_LR": 0.0}  # learns nothing: its loss stays where it starts


# --- the decision -----------------------------------------------------------------------------
def test_judge_compares_with_the_best_by_an_absolute_margin() -> None:
    rule = AbortRule(step=1000, margin=0.02)
    assert judge(rule, 3.03, (3.00, 7)) is not None  # 0.03 behind
    assert judge(rule, 3.02, (3.00, 7)) is None  # exactly the margin: goes on
    assert judge(rule, 2.90, (3.00, 7)) is None  # ahead
    assert judge(rule, 9.99, None) is None  # nothing to compare with
    assert judge(rule, math.nan, (3.00, 7)) is not None  # a diverged run is behind
    behind = judge(rule, 3.5, (3.0, 7))
    assert behind is not None and "3.5000 at step 1000" in behind.reason and "best 3.0000 (run 7)" in behind.reason and "+0.5000" in behind.reason


def test_loss_at_takes_the_train_point_of_the_rule_step() -> None:
    points = [MetricPoint("train", 999, 1, 4.0), MetricPoint("val", 1000, 2, val_loss=3.0), MetricPoint("train", 1000, 3, 3.7)]
    assert loss_at(AbortRule(1000, 0.1), points) == 3.7
    assert loss_at(AbortRule(1001, 0.1), points) is None


def test_the_rule_step_must_be_one_the_trainer_logs() -> None:
    assert unlogged_step(TrainerConfig(), 1000) == [] and unlogged_step(TrainerConfig(), 7) == []  # every 200 steps, and steps 1-10
    [issue] = unlogged_step(TrainerConfig(), 1100)
    assert issue.loc == ("abort_if_behind", "step") and "every 200 steps" in issue.msg and "1000" in issue.msg
    [issue] = unlogged_step(TrainerConfig.from_dict({"ITERATIONS": 500}), 600)
    assert "ITERATIONS (500)" in issue.msg


# --- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        maker = get_sessionmaker(url)
        with maker() as s:
            create_team(s, "golf")
            create_user(s, "golfer")
            s.commit()
        yield maker


@pytest.fixture()
def settings(tmp_path: Path, smoke_corpus_dir: Path) -> Settings:
    return Settings(home=tmp_path, gpu_count=0, data_root=smoke_corpus_dir, heartbeat_s=0.5, poll_interval_s=0.05, cancel_grace_s=1.0)


def new_run(maker, spec: dict, rule: dict | None = None) -> int:  # noqa: ANN001
    with maker() as s:
        team = s.scalar(select(Team.id).where(Team.name == "golf"))
        user = s.scalar(select(User.id).where(User.name == "golfer"))
        run = add_queued_run(s, team, user, spec=spec, seed=7, abort_if_behind=rule)
        s.commit()
        return run.id


def drive(maker, settings: Settings, run_id: int) -> str:  # noqa: ANN001
    return execute_run(run_id, launcher=LocalLauncher(settings), session_factory=maker, store=LocalArtifactStore(settings.home / "artifacts"),
                       settings=settings)  # fmt: skip


def train_loss(maker, run_id: int, step: int) -> float:  # noqa: ANN001
    with maker() as s:
        return s.scalar(select(Metric.train_loss).where(Metric.run_id == run_id, Metric.kind == "train", Metric.step == step))


@pytest.mark.slow
def test_a_losing_run_is_stopped_at_its_step_and_a_close_one_goes_on(maker, settings: Settings) -> None:
    best = new_run(maker, TINY)
    assert drive(maker, settings, best) == f"run {best} SUCCEEDED"
    best_loss = train_loss(maker, best, STEP)

    # 3000 steps would take minutes on CPU; the abort stops it at step 5.
    loser = new_run(maker, {**TINY, **LOSING, "ITERATIONS": 3000}, {"step": STEP, "margin": 0.01})
    outcome = drive(maker, settings, loser)
    assert outcome.startswith(f"run {loser} ABORTED_BEHIND"), outcome
    loser_loss = train_loss(maker, loser, STEP)
    assert loser_loss > best_loss + 0.01, (loser_loss, best_loss)
    with maker() as s:
        run = s.get(Run, loser)
        assert run.status == "ABORTED_BEHIND" and run.finished_at is not None
        last_step = s.scalar(select(Metric.step).where(Metric.run_id == loser).order_by(Metric.step.desc()).limit(1))
        assert last_step < 3000  # stopped, not run to its end
        event = s.scalars(select(RunEvent).where(RunEvent.run_id == loser).order_by(RunEvent.id.desc())).first()
        assert (event.from_status, event.to_status, event.actor) == ("RUNNING", "ABORTED_BEHIND", "worker")
        assert f"{loser_loss:.4f} at step {STEP}" in event.reason and f"best {best_loss:.4f} (run {best})" in event.reason
        # Saved: its expected time (600 s, no cap of its own, + overhead) minus the seconds it held the node.
        held = (run.finished_at - s.scalar(select(RunEvent.at).where(RunEvent.run_id == loser, RunEvent.to_status == "PROVISIONING"))).total_seconds()
        assert run.saved_seconds == pytest.approx(expected_seconds(run.spec, settings.run_overhead_s) - held, abs=2.0)
        team_id = run.team_id

    # The accounting counts it (as GPU-seconds: 0 on cpu hardware, so look at the run's node seconds too).
    with maker() as s:
        records = load_team_runs(s, team_id, utcnow() - timedelta(hours=1))
    [record] = [r for r in records if r.run_id == loser]
    assert record.saved_seconds == pytest.approx(run.saved_seconds)
    as_h100 = [r.__class__(**{**r.__dict__, "hardware": "H100:8"}) for r in records if r.run_id == loser]
    report = usage_report(as_h100, {"H100": 2.99}, period="day", since=utcnow() - timedelta(hours=1), now=utcnow())
    assert report.saved_gpu_hours == pytest.approx(8 * run.saved_seconds / 3600)

    # Within the margin: the same config as the best goes on to the end.
    close = new_run(maker, TINY, {"step": STEP, "margin": 0.5})
    assert drive(maker, settings, close) == f"run {close} SUCCEEDED"
