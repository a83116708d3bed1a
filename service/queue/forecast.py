"""Queue position and estimated start of every queued run: the policy played forward.

`forecast_queue` is pure. From now it calls ``pick_runs_to_start`` exactly as the
scheduler would, starts what it picks (each run holding its slot for its expected
time: its time cap plus overhead), then jumps to the next moment something changes
(a run in progress or started in the forecast ends, a requeued run's retry wait is
over) and asks again, until the queue is empty or nothing more can start. What a
finished run cost moves into its team's billed usage, so budgets and fair share
evolve as they will.

It assumes every run takes its full expected time and nothing new is submitted:
the estimates are upper bounds for the runs ahead, and a later higher-priority or
less-served team's submission can still move a run back.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from service.core.hardware import slots_of
from service.queue.policy import ActiveRun, QueuedRun, TeamUsage, budget_problem, pick_runs_to_start, start_order


@dataclass(frozen=True)
class QueueEstimate:
    run_id: int
    position: int | None  # 1 = the next run to start on its hardware; None: not expected to start
    estimated_start_at: datetime | None  # None: not expected to start (budget, no capacity)
    reason: str  # why it is not running now


def forecast_queue(
    queued: Sequence[QueuedRun],
    running: Sequence[ActiveRun],
    usage: Mapping[int, TeamUsage],
    capacity: Mapping[str, int],
    *,
    now: datetime,
    not_before: Mapping[int, datetime] | None = None,
    expected_run_hours: float = 1 / 3,
    max_starts: int | None = None,
) -> dict[int, QueueEstimate]:
    """One estimate per queued run (module docstring). ``not_before``: run id -> end of its retry wait.

    ``max_starts`` bounds the work (each simulated start re-runs the policy over the whole
    queue): runs that would start after that many are "beyond the forecast horizon".
    """
    not_before = dict(not_before or {})
    evolving = dict(usage)
    active = list(running)
    # The queue as lines, one per team and hardware, in the policy's start order. At each moment the
    # policy is shown only the runs it could pick: of a team without a budget, the first ready runs of
    # a line up to the hardware's free slots (it takes a line from its head); of a team with one, the
    # whole line (a run too dear for what is left is passed over for a cheaper one behind it). Showing
    # it every waiting run at every start cost ~5 s at 50,000 queued.
    lines: dict[tuple[int, str], list[QueuedRun]] = {}
    for q in sorted(queued, key=start_order) if max_starts is None else _first_of_each_line(queued, max_starts):
        lines.setdefault((q.team_id, q.hardware), []).append(q)
    waiting = sum(len(line) for line in lines.values())
    retrying = {q.id for line in lines.values() for q in line if q.id in not_before}  # waiting out a retry backoff
    budgeted = {team_id for team_id, u in usage.items() if u.budget_gpu_hours is not None}
    starts: dict[int, float] = {}  # run id -> seconds from now, in start order
    t = 0.0
    horizon_reached = waiting < len(queued)
    while waiting:
        if max_starts is not None and len(starts) >= max_starts:
            horizon_reached = True
            break
        clock = now + timedelta(seconds=t)
        busy: dict[str, int] = {}
        for a in active:
            busy[a.hardware] = busy.get(a.hardware, 0) + 1
        shown: list[QueuedRun] = []
        for (team_id, hardware), line in lines.items():
            free = slots_of(hardware, capacity) - busy.get(hardware, 0)
            if free <= 0:
                continue
            ready = (q for q in line if not not_before or not_before.get(q.id, now) <= clock)
            shown.extend(ready if team_id in budgeted else itertools.islice(ready, free))
        by_id = {q.id: q for q in shown}
        for run_id in pick_runs_to_start(shown, active, evolving, capacity, expected_run_hours=expected_run_hours):
            q = by_id[run_id]
            starts[run_id] = t
            active.append(ActiveRun(q.id, q.team_id, q.hardware, q.expected_s))
            line = lines[(q.team_id, q.hardware)]
            line.remove(q)
            if not line:
                del lines[(q.team_id, q.hardware)]
            waiting -= 1
            retrying.discard(run_id)
        wakes = [(not_before[run_id] - now).total_seconds() for run_id in retrying]
        moments = [w for w in wakes if w > t] + [t + max(0.0, a.remaining_s) for a in active]
        if not waiting or not moments:
            break
        step = min(moments) - t
        t += step
        still = []
        for a in active:  # time passes: what each run in progress spent is billed to its team
            after = replace(a, remaining_s=max(0.0, a.remaining_s - step))
            team = evolving.get(a.team_id, TeamUsage(a.team_id))
            evolving[a.team_id] = replace(team, used_gpu_hours=team.used_gpu_hours + a.remaining_gpu_hours - after.remaining_gpu_hours)
            if after.remaining_s > 1e-9:
                still.append(after)
        active = still
    positions: dict[int, int] = {}
    per_hardware: dict[str, int] = {}
    hardware_of = {q.id: q.hardware for q in queued}
    for run_id in starts:
        hardware = hardware_of[run_id]
        per_hardware[hardware] = per_hardware.get(hardware, 0) + 1
        positions[run_id] = per_hardware[hardware]
    committed = {t_id: u.used_gpu_hours for t_id, u in usage.items()}
    for a in running:
        committed[a.team_id] = committed.get(a.team_id, 0.0) + a.remaining_gpu_hours
    out = {}
    for q in queued:
        start = starts.get(q.id)
        at = now + timedelta(seconds=start) if start is not None else None
        reason = _reason(q, start, positions.get(q.id), usage, committed, capacity, not_before, now)
        if start is None and horizon_reached and reason.startswith(NOT_EXPECTED):
            reason = f"more than {max_starts} runs start before it: beyond the forecast horizon (CADDIE_QUEUE_FORECAST_MAX_STARTS)"
        out[q.id] = QueueEstimate(q.id, positions.get(q.id), at, reason)
    return out


NOT_EXPECTED = "not expected to start within the team's budget"


def _first_of_each_line(queued: Sequence[QueuedRun], n: int) -> list[QueuedRun]:
    """The first ``n`` runs of each team and hardware in the policy's order (priority, submission, id).

    The policy starts a team's runs of one hardware in that order, so a run with ``n``
    before it cannot be among the next ``n`` starts (a budget skip aside), and leaving it
    out of the simulation keeps each step's cost bounded by teams x hardware x n.
    """
    lines: dict[tuple[int, str], list[QueuedRun]] = {}
    for q in sorted(queued, key=start_order):
        lines.setdefault((q.team_id, q.hardware), []).append(q)
    return [q for line in lines.values() for q in line[:n]]


def _reason(
    q: QueuedRun,
    start: float | None,
    position: int | None,
    usage: Mapping[int, TeamUsage],
    committed: Mapping[int, float],
    capacity: Mapping[str, int],
    not_before: Mapping[int, datetime],
    now: datetime,
) -> str:
    """Why ``q`` is not running now, in words (the first thing that holds it back)."""
    if slots_of(q.hardware, capacity) <= 0:
        return f"no {q.hardware} capacity is configured (CADDIE_CAPACITY / CADDIE_MAX_CONCURRENT_RUNS)"
    team = usage.get(q.team_id, TeamUsage(q.team_id))
    problem = budget_problem(team, committed.get(q.team_id, 0.0), q.expected_gpu_hours)
    if problem:
        return problem
    retry = not_before.get(q.id)
    if retry is not None and retry > now:
        return f"waiting out its retry backoff after a failed attempt, until {retry:%Y-%m-%d %H:%M:%S} UTC"
    if start is None:
        return NOT_EXPECTED + ": its runs ahead of it use what is left"
    if start <= 0:
        return "starting now"
    ahead = position - 1 if position else 0
    return f"waiting for a {q.hardware} slot; {ahead} run{'s' if ahead != 1 else ''} of all teams go first (fair share, priority, submission order)"
