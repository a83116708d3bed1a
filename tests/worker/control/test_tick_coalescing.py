"""Scheduler tick requests coalesce: a burst of submits costs one tick per window, not one each."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from worker.control.dispatch import TickDebounce, TickGate


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
    assert 15 <= len(sent) <= 17  # one per 1 s window
    assert sent[0] == 0.0  # the first at once: nothing ran in the window before it
    assert all(0 < countdown <= 1.0 for countdown in sent[1:])  # the rest at their window's end, after the submits they stand for


def test_a_lone_request_is_sent_at_once_and_a_second_waits_for_the_window() -> None:
    clock, sent = FakeClock(), []
    debounce = TickDebounce(1.0, clock)
    assert debounce.request(sent.append) and sent == [0.0]  # a slot freed: filled now, not a window later
    clock.t += 0.3
    assert debounce.request(sent.append) and sent[-1] == pytest.approx(0.7)  # 1 s after the first
    clock.t += 0.5
    assert not debounce.request(sent.append)  # that tick is still pending: it covers this request
    clock.t += 5.0
    assert debounce.request(sent.append) and sent[-1] == 0.0  # quiet since: at once again


def test_a_failed_send_is_retried_by_the_next_request() -> None:
    clock, sent = FakeClock(), []
    debounce = TickDebounce(1.0, clock)

    def broken(_: float) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        debounce.request(broken)
    assert debounce.request(sent.append)
    assert sent == [0.0]


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
    assert runs_queue_length(app, queue) == 2  # the first at once, one at the window's end for the other 999
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


# --- across processes: where the ticks run -----------------------------------------------


def test_a_tick_asked_for_before_the_last_one_started_is_skipped() -> None:
    gate = TickGate()
    assert gate.admit(None, 10.0)  # beat's own tick: always runs
    assert not gate.admit(9.5, 10.2)  # asked for before the tick that started at 10.0: covered
    assert gate.admit(10.1, 10.3)  # asked for after it: runs, and counts as started at 10.3
    assert not gate.admit(10.25, 10.4)
    gate.forget()  # that tick failed: nothing is covered
    assert gate.admit(10.25, 10.5)


def test_a_burst_from_four_api_processes_costs_a_handful_of_full_ticks() -> None:
    """1,000 submits over 15 s spread over 4 API processes, each with its 1 s debounce; one control
    worker runs the ticks one after another, 0.43 s each when it works (the issue's measured tick),
    nothing when skipped."""
    clocks = [FakeClock() for _ in range(4)]
    debounces = [TickDebounce(1.0, c) for c in clocks]
    sent: list[tuple[float, float]] = []  # (when each tick is due on the worker, when it was asked for)
    for i in range(1000):
        p = i % 4
        clocks[p].t = 100.0 + i * 0.015
        debounces[p].request(lambda countdown, t=clocks[p].t: sent.append((t + countdown, t)))
    gate, worker_free_at, full = TickGate(), 0.0, 0
    for due, asked in sorted(sent):
        start = max(due, worker_free_at)
        if gate.admit(asked, start):  # requested_at: when the debounce sent it
            full += 1
            worker_free_at = start + 0.43
    assert len(sent) >= 56  # 4 processes x ~15 windows reach the broker...
    assert full <= 17  # ...but the worker runs about one full tick per window


def test_the_task_skips_a_covered_tick_without_reading_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.tasks as tasks

    gate = TickGate()
    gate.admit(None, 1000.0)
    monkeypatch.setattr(tasks, "_tick_gate", gate)
    monkeypatch.setattr(tasks, "get_runtime", lambda: pytest.fail("a covered tick must not build the runtime"))
    assert tasks.schedule_tick.run(requested_at=999.0) == []
