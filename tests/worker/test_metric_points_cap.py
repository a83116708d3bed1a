"""Metric points per run are bounded on the server (issue 17 item 5d): the worker thins train
points to every 2nd, 4th, ... step past CADDIE_MAX_TRAIN_POINTS; validation points all stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from service.accounts import create_team, create_user
from service.db import get_sessionmaker
from service.models import Metric, Run, utcnow
from tests.fresh_db import fresh_database
from worker.logparse import LogParser
from worker.run_log import RunLog, thinned_stride


class FakeLog:
    """A launcher whose job log is ``text``, read in pieces of ``piece`` bytes."""

    def __init__(self, text: str, piece: int) -> None:
        self.data = text.encode()
        self.piece = piece

    def read_log(self, _handle: object, offset: int) -> bytes:
        return self.data[offset : offset + self.piece]


@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        yield get_sessionmaker(url)


def _run(maker) -> int:  # noqa: ANN001
    with maker() as s:
        team, user = create_team(s, "cap"), create_user(s, "cap")
        s.flush()
        run = Run(team_id=team.id, user_id=user.id, name="r", spec={}, seed=1, group_key="g", track="unlimited", hardware="cpu", priority=0,
                  status="RUNNING", submitted_at=utcnow() - timedelta(seconds=1))  # fmt: skip
        s.add(run)
        s.commit()
        return run.id


def test_train_points_are_thinned_under_the_cap_and_val_points_kept(maker) -> None:  # noqa: ANN001
    steps = 20_000
    lines = [f"step:{i}/{steps} train_loss:{10 - i / steps:.4f} train_time:{i}ms step_avg:1.00ms" for i in range(1, steps + 1)]
    for i in range(1000, steps + 1, 1000):
        lines.insert(i + i // 1000, f"step:{i}/{steps} val_loss:2.0 val_bpb:1.2 train_time:{i}ms step_avg:1.00ms")
    text = "\n".join(lines) + "\n"
    run_id = _run(maker)
    run_log = RunLog(run_id, maker, retry_s=5, script=False, attempt=1, offset=0, base=0, max_train_points=500)
    launcher = FakeLog(text, 64 * 1024)
    seen: list = []
    while run_log.offset < len(launcher.data):  # as the executor polls a running job
        run_log.pull(launcher, None, final=False, on_points=seen.extend)  # type: ignore[arg-type]
    run_log.pull(launcher, None, final=True, on_points=seen.extend)  # type: ignore[arg-type]
    with maker() as s:
        train = s.scalars(select(Metric.step).where(Metric.run_id == run_id, Metric.kind == "train").order_by(Metric.step)).all()
        val = s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id, Metric.kind == "val"))
    assert 250 <= len(train) <= 500  # bounded, yet not starved
    assert train[-1] > steps * 0.95  # the whole curve, thinned evenly, not its first 500 steps
    assert len({b - a for a, b in zip(train, train[1:])}) == 1  # one stride for all of it
    assert val == 20  # every validation point
    parser = LogParser()
    every = parser.feed(text) + parser.flush()
    assert len(seen) == len(every)  # the early-abort rule still sees every point the log states
    assert run_log.train_stored == len(train)


def test_thinned_stride() -> None:
    assert thinned_stride(1, 0, list(range(1, 101)), 100) == 1
    assert thinned_stride(1, 100, [101], 100) == 2
    assert thinned_stride(1, 0, list(range(1, 1001)), 100) == 16  # 62 of 1000 steps on a stride of 16
