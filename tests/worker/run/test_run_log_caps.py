"""A run's log and points are bounded on the server (issue 17 item 5a, 5d): the worker stores a
log's first CADDIE_LOG_MAX_BYTES and marks where it stopped, and thins train points to every
2nd, 4th, ... step past CADDIE_MAX_TRAIN_POINTS; validation points and final figures all stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from service.core.db import get_sessionmaker
from service.core.models import LogChunk, Metric, Run, utcnow
from service.runs.logparse import LogParser
from service.teams.accounts import create_team, create_user
from tests.factories import make_run
from tests.fresh_db import fresh_database
from worker.run.log_stream import RunLog, storable, thinned_stride


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
        name = f"cap{s.scalar(select(func.count()).select_from(Run))}"
        team, user = create_team(s, name), create_user(s, name)
        s.flush()
        run = make_run(team.id, user.id, status="RUNNING", submitted_at=utcnow() - timedelta(seconds=1))
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


def test_a_log_over_the_cap_keeps_its_head_and_says_where_it_stopped(maker) -> None:  # noqa: ANN001
    lines = [f"step:{i}/3000 train_loss:{5 - i / 1000:.4f} train_time:{i}ms step_avg:1.00ms" for i in range(1, 3001)]
    lines.append("final_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.18000000")
    text = "\n".join(lines) + "\n"
    run_id = _run(maker)
    run_log = RunLog(run_id, maker, retry_s=5, script=False, attempt=1, offset=0, base=0, log_max_bytes=10_000)
    launcher = FakeLog(text, 4096)
    while run_log.offset < len(launcher.data):
        run_log.pull(launcher, None, final=False, on_points=lambda _p: None)  # type: ignore[arg-type]
    run_log.pull(launcher, None, final=True, on_points=lambda _p: None)  # type: ignore[arg-type]
    with maker() as s:
        run = s.get_one(Run, run_id)
        stored = "".join(s.scalars(select(LogChunk.data).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)))
    assert run.log_bytes == len(text)  # the job's log, all of it read
    assert run.log_truncated_at == len(stored.encode()) and 9_900 < len(stored) <= 10_000
    assert text.startswith(stored) and stored.endswith("\n")  # its head, whole lines
    assert run_log.parser.summary.final == {"val_loss": 2.0, "val_bpb": 1.18}  # the figure past the cap still counts


def test_storable() -> None:
    assert storable(0, b"ab\ncd\n", None) == 6
    assert storable(0, b"ab\ncd\n", 6) == 6
    assert storable(0, b"ab\ncd\n", 5) == 3  # up to the last whole line before the cap
    assert storable(2, b"abcdef", 5) == 3  # one line across the cap: cut at the cap
    assert storable(9, b"ab\n", 5) == 0


def _pull_all(run_log: RunLog, launcher: FakeLog) -> None:
    while run_log.offset < len(launcher.data):
        run_log.pull(launcher, None, final=False, on_points=lambda _p: None)  # type: ignore[arg-type]
    run_log.pull(launcher, None, final=True, on_points=lambda _p: None)  # type: ignore[arg-type]


def test_a_log_without_a_final_figure_is_not_read_again(maker) -> None:  # noqa: ANN001
    # Issue 17 item 5c: an executor that parsed the whole attempt re-reads nothing at the end.
    import tracemalloc

    text = "".join(f"noise line {i} " + "x" * 80 + "\n" for i in range(100_000))  # ~9.5 MB, no final figure
    run_id = _run(maker)
    run_log = RunLog(run_id, maker, retry_s=5, script=False, attempt=1, offset=0, base=0)
    _pull_all(run_log, FakeLog(text, 64 * 1024))
    tracemalloc.start()
    run_log.reread()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100_000  # nothing read

    # A re-attached executor (it began mid-attempt) does re-read, chunk by chunk, not the whole log at once.
    attached = RunLog(run_id, maker, retry_s=5, script=False, attempt=1, offset=len(text), base=0)
    assert not attached.seen_all
    tracemalloc.start()
    attached.reread()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert attached.seen_all and peak < len(text) // 2
