"""Which queued runs start next: weighted fair share between teams, within budgets and capacity.

`pick_runs_to_start` is pure (plain values in, run ids out). The worker's
scheduler calls it with the database's facts and dispatches what it returns;
``service.queue.forecast`` calls it on a simulated clock to say when each
queued run should start.

The policy, one slot at a time:

* free slots of a hardware kind = capacity(hardware) - runs of that kind
  already PROVISIONING or RUNNING;
* budgets (``budget_problem``): a team whose billed GPU-hours in the budget
  period reach its budget starts nothing; a run whose own expected cost
  (GPUs x its time cap plus overhead) would take the team past its budget,
  counting what its runs in progress and the runs picked in this tick are
  still expected to cost, does not start either (a cheaper run of the team
  behind it may);
* among the other teams with a queued run that fits a free slot and its
  budget, the one with the lowest share score goes first::

      score(team) = (used_gpu_hours + Σ_active max(1, gpus(hardware)) · expected_run_hours) / weight

  where the sum runs over its runs already running plus those picked in this
  tick, so a team that just got a slot falls behind the others until they
  had theirs;
* ties: the team whose best run was submitted first, then the lower team id;
* inside a team: higher priority first, then submitted first, then lower id.

A requeued run's retry wait (backoff) is the caller's: it leaves the run out
until the wait is over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from service.core.hardware import gpus_of, slots_of

# Budget comparisons allow this much rounding (GPU-hours).
EPSILON_GPU_HOURS = 1e-9


@dataclass(frozen=True)
class QueuedRun:
    id: int
    team_id: int
    hardware: str
    priority: int
    submitted_at: datetime
    expected_s: float = 0.0  # node seconds it is expected to hold (service.queue.estimates)

    @property
    def expected_gpu_hours(self) -> float:
        return gpus_of(self.hardware) * self.expected_s / 3600


@dataclass(frozen=True)
class ActiveRun:
    id: int
    team_id: int
    hardware: str
    remaining_s: float = 0.0  # node seconds it is still expected to hold

    @property
    def remaining_gpu_hours(self) -> float:
        return gpus_of(self.hardware) * max(0.0, self.remaining_s) / 3600


@dataclass(frozen=True)
class TeamUsage:
    team_id: int
    used_gpu_hours: float = 0.0  # billed in the budget period (service.billing.accounting)
    weight: float = 1.0
    budget_gpu_hours: float | None = None  # None: no budget

    @property
    def over_budget(self) -> bool:
        return self.budget_gpu_hours is not None and self.used_gpu_hours >= self.budget_gpu_hours


def budget_problem(team: TeamUsage, committed_gpu_hours: float, cost_gpu_hours: float) -> str | None:
    """Why the team's budget stops a run costing ``cost_gpu_hours``, or None if it may start.

    ``committed_gpu_hours``: billed so far plus what its runs in progress are still expected to cost.
    """
    budget = team.budget_gpu_hours
    if budget is None:
        return None
    if team.over_budget:
        return f"the team is over its budget: {team.used_gpu_hours:.2f} of {budget:g} GPU-hours used in the budget period"
    if committed_gpu_hours + cost_gpu_hours > budget + EPSILON_GPU_HOURS:
        left = max(0.0, budget - committed_gpu_hours)
        return (f"its expected cost ({cost_gpu_hours:.2f} GPU-hours at its time cap) exceeds what is left of the team's budget "
                f"({left:.2f} of {budget:g} GPU-hours, counting runs in progress)")  # fmt: skip
    return None


def start_order(q: QueuedRun) -> tuple[int, datetime, int]:
    """The order a team's runs of one hardware start in: priority (highest first), then submission, then id."""
    return (-q.priority, q.submitted_at, q.id)


def pick_runs_to_start(
    queued: Iterable[QueuedRun],
    running: Iterable[ActiveRun],
    usage: Mapping[int, TeamUsage],
    capacity: Mapping[str, int],
    *,
    expected_run_hours: float = 1 / 3,
) -> list[int]:
    """Ids of the queued runs to start now, in start order (policy in the module docstring).

    ``capacity`` maps a hardware string to its most concurrent runs; ``"*"``
    is the limit for hardware not named (0 if absent). Teams missing from
    ``usage`` have used nothing, weigh 1 and have no budget.
    """
    running = list(running)
    free: dict[str, int] = {}
    # What each team already holds (running runs and, below, runs picked now): its fair-share
    # charge, and the GPU-hours it is committed to (billed + still expected) for its budget.
    charge_by_team: dict[int, float] = {}
    committed: dict[int, float] = {t: u.used_gpu_hours for t, u in usage.items()}
    for r in running:
        charge_by_team[r.team_id] = charge_by_team.get(r.team_id, 0.0) + max(1, gpus_of(r.hardware)) * expected_run_hours
        committed[r.team_id] = committed.get(r.team_id, 0.0) + r.remaining_gpu_hours

    def free_slots(hardware: str) -> int:
        if hardware not in free:
            free[hardware] = slots_of(hardware, capacity) - sum(1 for r in running if r.hardware == hardware)
        return free[hardware]

    # Each team's runs in start order, one line per hardware: a line whose hardware has no free slot is
    # passed over at once (one scan of a team's whole queue per pick cost the forecast ~1 s at 50,000 queued).
    per_team: dict[int, dict[str, list[QueuedRun]]] = {}
    for q in sorted(queued, key=start_order):
        per_team.setdefault(q.team_id, {}).setdefault(q.hardware, []).append(q)

    picked: list[int] = []
    while True:
        best: tuple[float, datetime, int] | None = None
        best_run: QueuedRun | None = None
        for team_id, lines in per_team.items():
            team = usage.get(team_id, TeamUsage(team_id))
            if team.over_budget:
                continue
            spent = committed.get(team_id, 0.0)
            fits = (next((q for q in line if budget_problem(team, spent, q.expected_gpu_hours) is None), None)
                    for hardware, line in lines.items() if free_slots(hardware) > 0)  # fmt: skip
            head = min((q for q in fits if q is not None), key=start_order, default=None)
            if head is None:
                continue
            score = (team.used_gpu_hours + charge_by_team.get(team_id, 0.0)) / max(team.weight, 1e-9)
            key = (score, head.submitted_at, team_id)
            if best is None or key < best:
                best, best_run = key, head
        if best_run is None:
            return picked
        picked.append(best_run.id)
        team_id = best_run.team_id
        per_team[team_id][best_run.hardware].remove(best_run)
        free[best_run.hardware] -= 1
        charge_by_team[team_id] = charge_by_team.get(team_id, 0.0) + max(1, gpus_of(best_run.hardware)) * expected_run_hours
        committed[team_id] = committed.get(team_id, 0.0) + best_run.expected_gpu_hours
