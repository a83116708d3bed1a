"""The scheduling policy on plain values, and dispatch on a real database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.queue.estimates import expected_seconds
from service.queue.policy import budget_problem
from worker.control.dispatch import ActiveRun, QueuedRun, TeamUsage, gpus_of, parse_capacity, pick_runs_to_start

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def q(run_id: int, team: int, *, minute: int = 0, priority: int = 0, hardware: str = "H100:8") -> QueuedRun:
    return QueuedRun(run_id, team, hardware, priority, T0 + timedelta(minutes=minute))


def test_capacity_bounds_the_number_started_per_hardware() -> None:
    queued = [q(1, 1, minute=0), q(2, 1, minute=1), q(3, 1, minute=2, hardware="cpu")]
    assert pick_runs_to_start(queued, [], {}, {"H100:8": 1, "cpu": 5}) == [1, 3]
    assert pick_runs_to_start(queued, [ActiveRun(9, 2, "H100:8")], {}, {"H100:8": 1, "cpu": 5}) == [3]
    assert pick_runs_to_start(queued, [], {}, {"*": 0}) == []


def test_unnamed_hardware_uses_the_default_limit() -> None:
    assert pick_runs_to_start([q(1, 1), q(2, 1, minute=1)], [], {}, parse_capacity("", 1)) == [1]


def test_fifo_inside_a_team_with_priority_first() -> None:
    queued = [q(1, 1, minute=0), q(2, 1, minute=1, priority=5), q(3, 1, minute=2)]
    assert pick_runs_to_start(queued, [], {}, {"*": 3}) == [2, 1, 3]


def test_slots_alternate_between_equal_teams() -> None:
    # Team 1 submitted everything first; team 2 still gets every other slot.
    queued = [q(i, 1, minute=i) for i in range(1, 4)] + [q(10 + i, 2, minute=10 + i) for i in range(1, 4)]
    assert pick_runs_to_start(queued, [], {}, {"*": 4}) == [1, 11, 2, 12]


def test_a_team_already_running_waits_for_the_others() -> None:
    queued = [q(1, 1, minute=0), q(2, 2, minute=5)]
    assert pick_runs_to_start(queued, [ActiveRun(50, 1, "H100:8")], {}, {"*": 2}) == [2]


def test_weights_share_slots_in_proportion() -> None:
    queued = [q(i, 1, minute=i) for i in range(1, 10)] + [q(100 + i, 2, minute=i) for i in range(1, 10)]
    usage = {1: TeamUsage(1, weight=2.0), 2: TeamUsage(2, weight=1.0)}
    picked = pick_runs_to_start(queued, [], usage, {"*": 6})
    assert sum(1 for r in picked if r < 100) == 4 and sum(1 for r in picked if r > 100) == 2


def test_less_used_team_goes_first_and_over_budget_team_gets_nothing() -> None:
    queued = [q(1, 1, minute=0), q(2, 2, minute=9), q(3, 3, minute=1)]
    usage = {1: TeamUsage(1, used_gpu_hours=40.0), 2: TeamUsage(2, used_gpu_hours=1.0), 3: TeamUsage(3, used_gpu_hours=100.0, budget_gpu_hours=100.0)}
    assert pick_runs_to_start(queued, [], usage, {"*": 5}) == [2, 1]


def test_tie_breaks_on_earliest_submission() -> None:
    assert pick_runs_to_start([q(1, 1, minute=5), q(2, 2, minute=1)], [], {}, {"*": 1}) == [2]


def test_a_blocked_hardware_does_not_block_the_team_elsewhere() -> None:
    queued = [q(1, 1, minute=0, priority=9, hardware="H100:8"), q(2, 1, minute=1, hardware="cpu")]
    assert pick_runs_to_start(queued, [], {}, {"H100:8": 0, "cpu": 1}) == [2]


def test_gpus_and_capacity_strings() -> None:
    assert (gpus_of("H100:8"), gpus_of("H100"), gpus_of("cpu")) == (8, 1, 0)
    assert parse_capacity("H100:8=2, cpu=4", 1) == {"H100:8": 2, "cpu": 4, "*": 1}
    with pytest.raises(ValueError, match="H100:8"):
        parse_capacity("H100:8", 1)


# --- budgets ---------------------------------------------------------------------------------
def costly(run_id: int, team: int, *, minute: int = 0, hours: float = 1.0, hardware: str = "H100:8", priority: int = 0) -> QueuedRun:
    """A queued run expected to hold ``hardware`` for ``hours`` (H100:8: 8 GPU-hours per hour)."""
    return QueuedRun(run_id, team, hardware, priority, T0 + timedelta(minutes=minute), expected_s=hours * 3600)


def test_a_run_that_would_exceed_the_budget_does_not_start_but_a_cheaper_one_behind_it_does() -> None:
    # 10 GPU-h left: the 2 h run (16 GPU-h) does not fit, the 1 h run (8 GPU-h) does.
    usage = {1: TeamUsage(1, used_gpu_hours=90.0, budget_gpu_hours=100.0)}
    queued = [costly(1, 1, minute=0, hours=2.0), costly(2, 1, minute=1, hours=1.0)]
    assert pick_runs_to_start(queued, [], usage, {"*": 5}) == [2]


def test_runs_in_progress_count_against_the_budget_with_what_they_will_still_cost() -> None:
    # 20 GPU-h left; a run in progress will cost 8 more, so a second 8 GPU-h run fits and a third does not.
    usage = {1: TeamUsage(1, used_gpu_hours=80.0, budget_gpu_hours=100.0)}
    queued = [costly(1, 1, minute=0), costly(2, 1, minute=1)]
    running = [ActiveRun(9, 1, "H100:8", remaining_s=3600)]
    assert pick_runs_to_start(queued, running, usage, {"*": 5}) == [1]
    assert pick_runs_to_start(queued, [], usage, {"*": 5}) == [1, 2]


def test_a_team_at_its_budget_starts_nothing_not_even_a_free_run() -> None:
    usage = {1: TeamUsage(1, used_gpu_hours=100.0, budget_gpu_hours=100.0), 2: TeamUsage(2)}
    queued = [costly(1, 1, hardware="cpu"), costly(2, 2, minute=5)]
    assert pick_runs_to_start(queued, [], usage, {"*": 5}) == [2]


def test_budget_problem_says_which_limit_and_the_figures() -> None:
    over = budget_problem(TeamUsage(1, used_gpu_hours=101.0, budget_gpu_hours=100.0), 101.0, 1.0)
    assert over is not None and "over its budget" in over and "101.00 of 100" in over
    short = budget_problem(TeamUsage(1, used_gpu_hours=95.0, budget_gpu_hours=100.0), 95.0, 8.0)
    assert short is not None and "8.00 GPU-hours" in short and "5.00 of 100" in short
    assert budget_problem(TeamUsage(1, used_gpu_hours=92.0, budget_gpu_hours=100.0), 92.0, 8.0) is None
    assert budget_problem(TeamUsage(1, used_gpu_hours=1e9), 1e9, 1e9) is None  # no budget


def test_expected_time_comes_from_the_spec_cap_plus_overhead() -> None:
    assert expected_seconds({}, 1200) == 1800
    assert expected_seconds({"MAX_WALLCLOCK_SECONDS": 3000}, 1200) == 4200
    assert expected_seconds({"MAX_WALLCLOCK_SECONDS": 0}, 100) == 700  # no cap of its own: the track's 600 s
