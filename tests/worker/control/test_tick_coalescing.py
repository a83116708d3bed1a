"""Scheduler tick requests coalesce: a burst of submits costs one tick per window, not one each."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from worker.control.dispatch import TickDebounce


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_requests_within_a_window_share_one_delayed_tick() -> None:
    clock, sent = FakeClock(), []
    debounce = TickDebounce(1.0, clock)
    for i in range(1000):
        clock.t = 100.0 + i * 0.015  # 1,000 submits over 15 s
        debounce.request(sent.append)
    assert 14 <= len(sent) <= 16  # one per 1 s window
    assert all(countdown == 1.0 for countdown in sent)  # each runs after the submits it stands for


def test_a_failed_send_is_retried_by_the_next_request() -> None:
    clock, sent = FakeClock(), []
    debounce = TickDebounce(1.0, clock)

    def broken(_: float) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        debounce.request(broken)
    assert debounce.request(sent.append)
    assert sent == [1.0]


def test_a_burst_puts_one_tick_on_the_real_broker(redis_url: str, tmp_path: Path) -> None:
    import time

    from service.core.settings import Settings
    from worker.celery_app import make_celery
    from worker.tasks import runs_queue_length

    queue = f"ticks-test-{uuid.uuid4().hex[:8]}"
    app = make_celery(Settings(home=tmp_path, broker_url=redis_url))
    debounce = TickDebounce(5.0, time.monotonic)
    for _ in range(1000):
        debounce.request(lambda countdown: app.send_task("caddie.nothing", queue=queue, countdown=countdown, expires=countdown + 10))
    assert runs_queue_length(app, queue) == 1
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
