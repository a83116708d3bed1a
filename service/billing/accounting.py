"""What compute cost: billed GPU-seconds and dollars per run, split into phases,
summed per team per period (day, week, month; UTC) and per user.

A run is billed from the moment its node is (its PROVISIONING event) to the
node's release (the next QUEUED or terminal event). A run sent back to the
queue (preemption, no capacity) and dispatched again is billed once per
attempt::

    QUEUED ─▶ PROVISIONING ──────▶ RUNNING ─────────────────────────▶ QUEUED | SUCCEEDED | ...
              │ provisioning │ setup, data │ training │ evaluation │ upload │
              └──────────────── one billed attempt ─────────────────────────┘

Phases, in seconds of an attempt (then x GPUs of the hardware, ``H100:8`` -> 8):

* provisioning = RUNNING - PROVISIONING (all of it when the attempt never ran);
* training     = the run's ``train_seconds``, evaluation = its ``eval_seconds``:
  both describe the last attempt only, and are clamped to its running time;
* setup        = the rest of the last attempt's RUNNING..release time (setup,
  data download, upload; and, until a live run reports its result, all of it);
* requeued     = the running time of attempts that went back to the queue
  (work lost to preemption).

cost = GPU-seconds / 3600 x the price per GPU-hour of the hardware
(``Settings.gpu_price_table``: the exact hardware string, else its accelerator). The
hardware is what ran: the node the worker recorded at launch, where it differs from the
spec's (``billed_hardware``).
A window [since, now) clips the billed intervals; an interval crossing a period
boundary is split there, the phases inside the running time spread evenly over it.

Warm starts: a run whose latest attempt that got running found a cluster kept
warm by an earlier run (``runs.warm_start``, written by the executor with its
RUNNING) skipped most of the provisioning a fresh node costs. Each one whose
RUNNING falls in the window counts once, and saved what a cold start of its
hardware would have spent provisioning minus what it spent itself (never below
0) x its GPUs, priced like billed time. A cold start's provisioning is the
median over the team's cold-started attempts of that hardware that got running
in the window, or ``cold_provision_s`` (CADDIE_COLD_PROVISION_S) when there is
none. Only the latest attempt of a run is known warm or cold: earlier attempts
of a requeued run are in neither count.

Everything above ``load_team_runs`` is pure: plain values in, plain values out.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.core.hardware import NodeHardware, gpus_of
from service.core.models import Run, RunEvent, User
from service.core.status import TERMINAL_VALUES, RunStatus

PERIODS = ("day", "week", "month")
PHASES = ("provisioning", "setup", "training", "evaluation", "requeued")
TERMINAL = frozenset(TERMINAL_VALUES)
# How many periods the report covers when no ``since`` is given.
DEFAULT_SPAN = {"day": 14, "week": 4, "month": 3}
# A cold start's provisioning seconds when the window has none to measure (Settings.cold_provision_s).
COLD_PROVISION_S = 360.0


@dataclass(frozen=True)
class Transition:
    """One status change of a run: when, and the status it went to."""

    at: datetime
    to_status: str


@dataclass(frozen=True)
class Attempt:
    """One billed stretch: node billed at ``billed_from``, job running from
    ``running_from`` (None: never got that far), node released at ``released_at``
    (None: still held). ``requeued``: it ended back in the queue."""

    billed_from: datetime
    running_from: datetime | None
    released_at: datetime | None
    requeued: bool = False


@dataclass(frozen=True)
class RunRecord:
    run_id: int
    user: str
    hardware: str
    events: tuple[Transition, ...]
    train_seconds: float | None = None
    eval_seconds: float | None = None
    name: str = ""
    status: str = ""
    team_id: int = 0
    saved_seconds: float | None = None  # node seconds an early abort saved (service.runs.early_abort)
    warm_start: bool | None = None  # the latest attempt that got running was on a reused warm cluster (None: unknown)


@dataclass(frozen=True)
class Piece:
    """A billed interval and how its seconds divide among phases (shares sum to 1)."""

    start: datetime
    end: datetime
    shares: Mapping[str, float]


def billed_attempts(events: Iterable[Transition]) -> list[Attempt]:
    """The billed attempts in events given in the order they happened."""
    attempts: list[Attempt] = []
    start: datetime | None = None
    running: datetime | None = None
    for event in events:
        if event.to_status == RunStatus.PROVISIONING and start is None:
            start, running = event.at, None
        elif start is None:
            continue
        elif event.to_status == RunStatus.RUNNING:
            running = running or event.at
        elif event.to_status == RunStatus.QUEUED or event.to_status in TERMINAL:
            attempts.append(Attempt(start, running, event.at, requeued=event.to_status == RunStatus.QUEUED))
            start = running = None
    if start is not None:
        attempts.append(Attempt(start, running, None))
    return attempts


def phase_pieces(attempts: Sequence[Attempt], train_seconds: float | None, eval_seconds: float | None, now: datetime) -> list[Piece]:
    """The billed intervals of a run's attempts with their phase shares (module docstring)."""
    pieces: list[Piece] = []
    last_ran = max((i for i, a in enumerate(attempts) if a.running_from is not None and not a.requeued), default=None)
    for i, a in enumerate(attempts):
        released = a.released_at or now
        provisioned_until = min(a.running_from or released, released)
        if provisioned_until > a.billed_from:
            pieces.append(Piece(a.billed_from, provisioned_until, {"provisioning": 1.0}))
        if a.running_from is None or released <= a.running_from:
            continue
        span = (released - a.running_from).total_seconds()
        if a.requeued:
            shares = {"requeued": 1.0}
        else:
            training = min(max(train_seconds or 0.0, 0.0), span) if i == last_ran else 0.0
            evaluation = min(max(eval_seconds or 0.0, 0.0), span - training) if i == last_ran else 0.0
            shares = {"training": training / span, "evaluation": evaluation / span, "setup": (span - training - evaluation) / span}
        pieces.append(Piece(a.running_from, released, shares))
    return pieces


def billed_hardware(asked: str, node: Mapping[str, Any] | None) -> str:
    """The hardware a run is billed on: what its node reported at launch (runs.node_hardware),
    else what its spec asked for (not launched yet, or launched before nodes were recorded).
    An ``H100:8`` spec that ran on the CPU bills the CPU."""
    ran = NodeHardware.from_json(node)
    return ran.hardware if ran is not None else asked


def price_per_gpu_hour(hardware: str, prices: Mapping[str, float]) -> float | None:
    """Dollars per GPU-hour of ``hardware``: its exact entry, else its accelerator's, else None."""
    if hardware in prices:
        return prices[hardware]
    return prices.get(hardware.partition(":")[0])


def period_start(moment: datetime | date, period: str) -> date:
    """First UTC day of the period holding ``moment``: itself (day), its Monday (week), the 1st (month)."""
    day = moment.astimezone(timezone.utc).date() if isinstance(moment, datetime) else moment
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")


def next_period(start: date, period: str) -> date:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, timezone.utc)


def default_since(now: datetime, period: str) -> datetime:
    """Start of the report when none is asked: DEFAULT_SPAN periods, the current one included."""
    start = period_start(now, period)
    for _ in range(DEFAULT_SPAN[period] - 1):
        start = period_start(start - timedelta(days=1), period)
    return midnight(start)


def split_by_period(start: datetime, end: datetime, period: str) -> list[tuple[date, float]]:
    """Seconds of [start, end) in each period it touches, as (period start, seconds)."""
    out = []
    while start < end:
        bucket = period_start(start, period)
        piece_end = min(end, midnight(next_period(bucket, period)))
        out.append((bucket, (piece_end - start).total_seconds()))
        start = piece_end
    return out


@dataclass
class Figures:
    """GPU-seconds and dollars, in total and per phase."""

    gpu_seconds: float = 0.0
    cost: float = 0.0
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))  # GPU-seconds
    phase_cost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, phase: str, gpu_seconds: float, price: float | None) -> None:
        dollars = gpu_seconds / 3600 * (price or 0.0)
        self.gpu_seconds += gpu_seconds
        self.cost += dollars
        self.phases[phase] += gpu_seconds
        self.phase_cost[phase] += dollars

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600


@dataclass
class RunUsage:
    id: int
    name: str
    user: str
    hardware: str
    status: str
    attempts: int
    figures: Figures


@dataclass(frozen=True)
class WarmStarts:
    """Runs started on a reused warm cluster inside a window, and the provisioning they did not pay for."""

    count: int
    saved_gpu_seconds: float
    saved_cost: float

    @property
    def saved_gpu_hours(self) -> float:
        return self.saved_gpu_seconds / 3600


@dataclass
class UsageReport:
    period: str
    since: datetime
    until: datetime
    total: Figures
    periods: dict[date, Figures]
    days: dict[date, Figures]
    users: dict[str, Figures]
    runs: list[RunUsage]
    unpriced: list[str]  # hardware with GPUs but no price
    # GPU-seconds not spent thanks to early aborts inside the window (each counted at its abort).
    saved_gpu_seconds: float = 0.0
    warm: WarmStarts = field(default_factory=lambda: WarmStarts(0, 0.0, 0.0))

    @property
    def saved_gpu_hours(self) -> float:
        return self.saved_gpu_seconds / 3600


def last_run_attempt(record: RunRecord) -> Attempt | None:
    """The latest attempt of ``record`` that got running: the one ``warm_start`` describes."""
    return next((a for a in reversed(billed_attempts(record.events)) if a.running_from is not None), None)


def warm_start_savings(records: Iterable[RunRecord], prices: Mapping[str, float], *, since: datetime, now: datetime, cold_provision_s: float) -> WarmStarts:
    """Warm starts whose RUNNING is in [since, now), and the provisioning they saved (module docstring)."""
    warm: list[tuple[RunRecord, float]] = []  # (run, its own provisioning seconds)
    cold: dict[str, list[float]] = {}  # provisioning seconds of cold starts, per hardware
    for record in records:
        attempt = last_run_attempt(record)
        if record.warm_start is None or attempt is None or attempt.running_from is None or not since <= attempt.running_from < now:
            continue
        provisioning = (attempt.running_from - attempt.billed_from).total_seconds()
        if record.warm_start:
            warm.append((record, provisioning))
        else:
            cold.setdefault(record.hardware, []).append(provisioning)
    gpu_seconds = cost = 0.0
    for record, provisioning in warm:
        baseline = statistics.median(cold[record.hardware]) if record.hardware in cold else cold_provision_s
        saved = gpus_of(record.hardware) * max(0.0, baseline - provisioning)
        gpu_seconds += saved
        cost += saved / 3600 * (price_per_gpu_hour(record.hardware, prices) or 0.0)
    return WarmStarts(len(warm), gpu_seconds, cost)


def usage_report(
    records: Iterable[RunRecord],
    prices: Mapping[str, float],
    *,
    period: str,
    since: datetime,
    now: datetime,
    cold_provision_s: float = COLD_PROVISION_S,
) -> UsageReport:
    """Billed figures of ``records`` inside [since, now): in total, per period, per UTC day, per user and per run;
    and what early aborts and warm starts saved."""
    period_start(now, period)  # checks the name
    records = list(records)
    periods: dict[date, Figures] = {}
    bucket = period_start(since, period)
    while midnight(bucket) < now:
        periods[bucket] = Figures()
        bucket = next_period(bucket, period)
    days = {d: Figures() for d in split_days(since, now)}
    total, runs, unpriced = Figures(), [], set()
    users: dict[str, Figures] = {}
    saved = 0.0
    for record in records:
        gpus = gpus_of(record.hardware)
        price = price_per_gpu_hour(record.hardware, prices)
        if gpus and price is None:
            unpriced.add(record.hardware)
        attempts = billed_attempts(record.events)
        run_figures = Figures()
        for piece in phase_pieces(attempts, record.train_seconds, record.eval_seconds, now):
            start, end = max(piece.start, since), min(piece.end, now)
            if not gpus or end <= start:
                continue
            for grouping, buckets in (("p", periods), ("d", days)):
                for key, seconds in split_by_period(start, end, period if grouping == "p" else "day"):
                    for phase, share in piece.shares.items():
                        if share:
                            buckets.setdefault(key, Figures()).add(phase, gpus * seconds * share, price)
            for phase, share in piece.shares.items():
                if share:
                    gpu_seconds = gpus * (end - start).total_seconds() * share
                    for figures in (run_figures, total, users.setdefault(record.user, Figures())):
                        figures.add(phase, gpu_seconds, price)
        if run_figures.gpu_seconds:
            runs.append(RunUsage(record.run_id, record.name, record.user, record.hardware, record.status, len(attempts), run_figures))
        saved += gpus * saved_in_window(record, since, now)
    warm = warm_start_savings(records, prices, since=since, now=now, cold_provision_s=cold_provision_s)
    return UsageReport(period, since, now, total, periods, days, dict(sorted(users.items())), runs, sorted(unpriced), saved, warm)


def saved_in_window(record: RunRecord, since: datetime, now: datetime) -> float:
    """Node seconds an early abort saved, if the run was aborted inside [since, now)."""
    if not record.saved_seconds:
        return 0.0
    aborted = next((e.at for e in reversed(record.events) if e.to_status == RunStatus.ABORTED_BEHIND), None)
    return record.saved_seconds if aborted is not None and since <= aborted < now else 0.0


def billed_gpu_seconds(record: RunRecord, since: datetime, now: datetime) -> float:
    """GPU-seconds of ``record`` billed inside [since, now): the total ``usage_report`` counts for it."""
    gpus = gpus_of(record.hardware)
    if not gpus:
        return 0.0
    return _gpu_seconds_inside(billed_spans(record, now), since, now)


def billed_spans(record: RunRecord, now: datetime) -> tuple[int, tuple[tuple[datetime, datetime], ...]]:
    """(GPUs, billed intervals) of a run: what ``billed_gpu_seconds`` sums."""
    pieces = phase_pieces(billed_attempts(record.events), record.train_seconds, record.eval_seconds, now)
    return gpus_of(record.hardware), tuple((p.start, p.end) for p in pieces)


def _gpu_seconds_inside(spans: tuple[int, tuple[tuple[datetime, datetime], ...]], since: datetime, now: datetime) -> float:
    gpus, intervals = spans
    return gpus * sum(max(0.0, (min(end, now) - max(start, since)).total_seconds()) for start, end in intervals)


def split_days(since: datetime, now: datetime) -> list[date]:
    first, last = since.astimezone(timezone.utc).date(), now.astimezone(timezone.utc).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# --- I/O ---------------------------------------------------------------------------------
def load_team_runs(session: Session, team_id: int, since: datetime) -> list[RunRecord]:
    """The team's runs that may have been billed at or after ``since``, with their events in order. A queued run
    never attempted has billed nothing and is left out: a team with 10,000 queued read them all on every usage read."""
    return load_runs(session, [team_id], since, billed_only=True)


def _billable(team_ids: Iterable[int], since: datetime, billed_only: bool) -> list[Any]:
    """The runs of these teams that may have been billed at or after ``since``. ``billed_only`` leaves out
    runs still in the queue that never left it (nothing billed; at 10,000 queued they were most of what a
    scheduler tick read)."""
    mine = [Run.team_id.in_(sorted(set(team_ids))), or_(Run.finished_at.is_(None), Run.finished_at >= since)]
    if billed_only:
        mine.append(or_(Run.status != RunStatus.QUEUED.value, Run.attempts > 0))
    return mine


def load_runs(
    session: Session, team_ids: Iterable[int], since: datetime, *, billed_only: bool = False, only: Iterable[int] | None = None
) -> list[RunRecord]:
    """The runs of these teams that may have been billed at or after ``since``, with their events in order
    (``only``: of these run ids alone)."""
    mine = _billable(team_ids, since, billed_only)
    if only is not None:
        mine.append(Run.id.in_(sorted(set(only))))
    rows = session.execute(
        select(Run.id, Run.name, Run.status, User.name, Run.hardware, Run.train_seconds, Run.eval_seconds, Run.team_id, Run.saved_seconds, Run.warm_start,
               Run.node_hardware)
        .join(User, User.id == Run.user_id)
        .where(*mine)
        .order_by(Run.id)
    ).all()
    events: dict[int, list[Transition]] = {}
    for run_id, at, to_status in session.execute(
        select(RunEvent.run_id, RunEvent.at, RunEvent.to_status)
        .join(Run, Run.id == RunEvent.run_id)
        .where(*mine)
        .order_by(RunEvent.run_id, RunEvent.id)
    ):
        events.setdefault(run_id, []).append(Transition(at, to_status))
    return [
        RunRecord(run_id, user, billed_hardware(hardware, node), tuple(events.get(run_id, ())), train_s, eval_s, name, status, team_id, saved_s, warm)
        for run_id, name, status, user, hardware, train_s, eval_s, team_id, saved_s, warm, node in rows
    ]


# What an ended run billed never changes (a final status has no way out), so each process keeps its
# billed spans: a budget read (every scheduler tick that has a free slot, every forecast, the usage pages)
# reads the events of runs that ended since the last read and of running ones only, not of the whole
# period. Keyed by database, run id and end time, so a recreated database (tests) never matches.
_ENDED_SPANS: dict[tuple[str, int, datetime], tuple[int, tuple[tuple[datetime, datetime], ...]]] = {}
_ENDED_SPANS_MAX = 500_000


def billed_gpu_hours(session: Session, team_ids: Iterable[int], since: datetime, now: datetime) -> dict[int, float]:
    """GPU-hours billed to each team inside [since, now): what budgets are measured in (the
    scheduler's and ``GET /teams/{name}/usage``'s), the total of its usage report."""
    team_ids = sorted(set(team_ids))
    db = str(session.get_bind().engine.url)
    rows = session.execute(select(Run.id, Run.team_id, Run.status, Run.finished_at).where(*_billable(team_ids, since, True))).all()
    team_of = {run_id: team_id for run_id, team_id, _, _ in rows}
    ended = {run_id: finished_at for run_id, _, status, finished_at in rows if status in TERMINAL and finished_at is not None}
    spans = {run_id: got for run_id, finished_at in ended.items() if (got := _ENDED_SPANS.get((db, run_id, finished_at))) is not None}
    missing = [run_id for run_id in team_of if run_id not in spans]
    for record in load_runs(session, team_ids, since, billed_only=True, only=missing) if missing else ():
        spans[record.run_id] = got = billed_spans(record, now)
        if record.run_id in ended and record.status in TERMINAL:  # ended when both reads looked
            if len(_ENDED_SPANS) >= _ENDED_SPANS_MAX:
                _ENDED_SPANS.clear()
            _ENDED_SPANS[(db, record.run_id, ended[record.run_id])] = got
    used: dict[int, float] = {}
    for run_id, run_spans in spans.items():
        used[team_of[run_id]] = used.get(team_of[run_id], 0.0) + _gpu_seconds_inside(run_spans, since, now) / 3600
    return used


@dataclass(frozen=True)
class BudgetStanding:
    """Where a team stands against its budget (the API's body of it, service.billing.schemas.BudgetOut, is this class)."""

    budget_gpu_hours: float | None  # None: no budget
    period_days: float
    used_gpu_hours: float  # billed over the last period_days

    @property
    def remaining_gpu_hours(self) -> float | None:
        return None if self.budget_gpu_hours is None else max(0.0, self.budget_gpu_hours - self.used_gpu_hours)


def team_report(
    session: Session,
    team_id: int,
    budget_gpu_hours: float | None,
    prices: Mapping[str, float],
    *,
    period: str,
    since: datetime | None,
    now: datetime,
    budget_period_days: float,
    cold_provision_s: float = COLD_PROVISION_S,
) -> tuple[UsageReport, BudgetStanding]:
    """The team's usage report over [since, now) and its budget over the rolling budget period."""
    since = since or default_since(now, period)
    report = usage_report(load_team_runs(session, team_id, since), prices, period=period, since=since, now=now, cold_provision_s=cold_provision_s)
    used = billed_gpu_hours(session, [team_id], now - timedelta(days=budget_period_days), now).get(team_id, 0.0)
    return report, BudgetStanding(budget_gpu_hours, budget_period_days, used)
