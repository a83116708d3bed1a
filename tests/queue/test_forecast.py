"""Queue forecasts (service.queue.forecast): the policy played forward gives each queued
run its position, estimated start and the reason it waits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from service.queue.forecast import forecast_queue
from service.queue.policy import ActiveRun, QueuedRun, TeamUsage

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
HOUR = 3600.0


def q(run_id: int, team: int, *, minute: int = 0, hours: float = 1.0, hardware: str = "H100:8", priority: int = 0) -> QueuedRun:
    return QueuedRun(run_id, team, hardware, priority, NOW - timedelta(hours=1) + timedelta(minutes=minute), expected_s=hours * HOUR)


def starts(estimates) -> dict[int, float | None]:  # noqa: ANN001
    return {i: None if e.estimated_start_at is None else (e.estimated_start_at - NOW).total_seconds() / HOUR for i, e in estimates.items()}


def test_one_slot_runs_start_back_to_back_after_the_running_one() -> None:
    queued = [q(1, 1, minute=0), q(2, 1, minute=1), q(3, 1, minute=2)]
    running = [ActiveRun(9, 2, "H100:8", remaining_s=0.5 * HOUR)]
    est = forecast_queue(queued, running, {}, {"H100:8": 1}, now=NOW)
    assert starts(est) == {1: 0.5, 2: 1.5, 3: 2.5}
    assert [est[i].position for i in (1, 2, 3)] == [1, 2, 3]
    assert "waiting for a H100:8 slot; 2 runs" in est[3].reason


def test_teams_alternate_in_the_forecast_as_in_dispatch() -> None:
    # Team 1 submitted first, but the slots alternate between equal teams.
    queued = [q(1, 1, minute=0), q(2, 1, minute=1), q(11, 2, minute=5), q(12, 2, minute=6)]
    est = forecast_queue(queued, [], {}, {"H100:8": 1}, now=NOW)
    assert starts(est) == {1: 0.0, 11: 1.0, 2: 2.0, 12: 3.0}
    assert est[1].reason == "starting now"


def test_positions_count_per_hardware() -> None:
    queued = [q(1, 1, minute=0), q(2, 1, minute=1), q(3, 1, minute=2, hardware="cpu")]
    est = forecast_queue(queued, [], {}, {"H100:8": 1, "cpu": 1}, now=NOW)
    assert (est[1].position, est[2].position, est[3].position) == (1, 2, 1)
    assert starts(est)[3] == 0.0


def test_a_team_over_budget_keeps_its_queue_with_no_start_and_the_reason() -> None:
    usage = {1: TeamUsage(1, used_gpu_hours=120.0, budget_gpu_hours=100.0)}
    est = forecast_queue([q(1, 1), q(2, 2, minute=3)], [], usage, {"H100:8": 2}, now=NOW)
    assert est[1].estimated_start_at is None and est[1].position is None
    assert "over its budget" in est[1].reason and "120.00 of 100" in est[1].reason
    assert starts(est)[2] == 0.0


def test_runs_past_what_the_budget_leaves_are_not_expected_to_start() -> None:
    # 20 GPU-h left, 8 GPU-h per run: two start (one after the other on one slot), the third never does.
    usage = {1: TeamUsage(1, used_gpu_hours=80.0, budget_gpu_hours=100.0)}
    est = forecast_queue([q(1, 1, minute=0), q(2, 1, minute=1), q(3, 1, minute=2)], [], usage, {"H100:8": 1}, now=NOW)
    assert starts(est) == {1: 0.0, 2: 1.0, 3: None}
    assert "within the team's budget" in est[3].reason


def test_a_run_in_retry_backoff_starts_when_its_wait_is_over() -> None:
    est = forecast_queue([q(1, 1)], [], {}, {"H100:8": 1}, now=NOW, not_before={1: NOW + timedelta(minutes=30)})
    assert starts(est) == {1: 0.5} and "retry backoff" in est[1].reason


def test_no_capacity_says_so() -> None:
    est = forecast_queue([q(1, 1, hardware="H200:8")], [], {}, {"H100:8": 1}, now=NOW)
    assert est[1].estimated_start_at is None and "no H200:8 capacity" in est[1].reason


def test_forecast_is_deterministic_and_every_run_within_budget_gets_a_start() -> None:
    queued = [q(i, i % 3, minute=i, hours=0.5 + (i % 4) * 0.25) for i in range(1, 40)]
    usage = {t: TeamUsage(t, weight=1.0 + t) for t in range(3)}
    a = forecast_queue(queued, [], usage, {"H100:8": 3}, now=NOW)
    b = forecast_queue(list(reversed(queued)), [], usage, {"H100:8": 3}, now=NOW)
    assert a == b
    assert all(e.estimated_start_at is not None for e in a.values())


def test_the_forecast_stops_at_its_horizon_and_says_so() -> None:
    queued = [q(i, 1, minute=i) for i in range(1, 6)]
    est = forecast_queue(queued, [], {}, {"H100:8": 1}, now=NOW, max_starts=2)
    assert [est[i].position for i in range(1, 6)] == [1, 2, None, None, None]
    assert starts(est) == {1: 0.0, 2: 1.0, 3: None, 4: None, 5: None}
    assert all("beyond the forecast horizon" in est[i].reason for i in (3, 4, 5))
    # Without the bound the same queue is forecast to the end.
    assert starts(forecast_queue(queued, [], {}, {"H100:8": 1}, now=NOW)) == {1: 0.0, 2: 1.0, 3: 2.0, 4: 3.0, 5: 4.0}
