"""Where queued runs stand: position, estimated start and why each waits (the domain side of GET /queue).

The figures are ``service.queue.forecast`` over the facts the scheduler
itself reads (``service.queue.state``), with the scheduling settings the
worker uses (capacity, budgets, time estimates, retry backoff). Positions count
every team's runs; a caller sees only its own teams' runs.

Requests read the forecast the control worker stores (``service.queue.stored``), the same
for every API replica. Without a fresh one (the worker is down, or tests without one) an API
process computes it itself, reusing it for queue_forecast_ttl_s, and logs that it does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, Unpack

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from service.core.models import Run, StoredQueueEstimate, Team, User, utcnow
from service.core.settings import Settings
from service.core.status import RunStatus
from service.queue import stored
from service.queue.forecast import QueueEstimate, forecast_queue
from service.queue.state import load_queue_state
from service.teams.tokens import Principal


def queue_estimates(session: Session, settings: Settings, now: datetime | None = None) -> dict[int, QueueEstimate]:
    """An estimate for every queued run, keyed by run id."""
    return queue_forecast(session, settings, now)[0]


def queue_forecast(session: Session, settings: Settings, now: datetime | None = None) -> tuple[dict[int, QueueEstimate], dict[int, int]]:
    """An estimate for every queued run, keyed by run id, and each queued run's team id."""
    now = now or utcnow()
    state = load_queue_state(
        session,
        now=now,
        budget_period=timedelta(days=settings.budget_period_days),
        retry_backoff_s=settings.retry_backoff_s,
        run_overhead_s=settings.run_overhead_s,
    )
    estimates = forecast_queue(state.queued, state.running, state.usage, settings.capacity_table, now=now,
                               not_before=state.not_before, expected_run_hours=settings.expected_run_hours,
                               max_starts=settings.queue_forecast_max_starts)  # fmt: skip
    return estimates, {q.id: q.team_id for q in state.queued}


# Run lists (GET /runs) share one forecast per database and settings for queue_forecast_ttl_s:
# on 100,000 runs with 5,859 queued, reading the scheduler's state takes ~0.9 s, too much
# for every page of a list. One thread refreshes an expired forecast while the others keep
# answering from the old one (32 clients all refreshing at once took p99 to 15 s).
@dataclass
class _Recent:
    made_at: float = -math.inf
    estimates: dict[int, QueueEstimate] = field(default_factory=dict)
    refreshing: threading.Lock = field(default_factory=threading.Lock)


_recent: dict[tuple[str, str], _Recent] = {}
_clock = time.monotonic  # a name tests can move forward instead of sleeping past the TTL
_recent_lock = threading.Lock()


def estimates_from(session: Session, settings: Settings, runs: Iterable[tuple[int, str]], read: stored.StoredForecast | None) -> dict[int, QueueEstimate]:
    """Estimates for those of ``(run id, status)`` that are QUEUED, from the stored forecast ``read`` for
    those runs (in the query that read them; None: none is stored); no forecast when none is queued.

    A fresh stored forecast answers (a run it lacks, submitted since, is forecast here while the queue
    is short, else says when its place comes). Without a fresh one (the control worker is down) a short
    queue is forecast here (reused for queue_forecast_ttl_s, as GET /queue does); a long one answers from
    the stale one, however old, as GET /queue does: no request forecasts a long queue (at 50,000 queued
    that is ~1.5 s, and every run submitted since would ask again)."""
    wanted = {run_id for run_id, status in runs if status == RunStatus.QUEUED}
    return _estimates(session, settings, wanted, read) if wanted else {}


def _estimates(session: Session, settings: Settings, wanted: set[int], read: stored.StoredForecast | None) -> dict[int, QueueEstimate]:
    short = settings.queue_forecast_inline_max
    forecast = _fresh(read, settings)
    if forecast is None:
        if (read.size + len(wanted) <= short) if read is not None else _queued_at_most(session, short):
            _say_computed(read, settings)
            return _pick(_recent_estimates(session, settings, wanted), wanted)
        _say_stale(read, settings)
        if read is None:
            return {run_id: _not_yet_forecast(run_id, None, settings) for run_id in wanted}
        forecast = read
    estimates = forecast.estimates
    missing = wanted - estimates.keys()
    if missing and forecast.size + len(missing) <= short:
        estimates = _recent_estimates(session, settings, wanted)  # a small queue: cheap enough to forecast here
    elif missing:
        estimates = {**estimates, **{run_id: _not_yet_forecast(run_id, forecast.made_at, settings) for run_id in missing}}
    return _pick(estimates, wanted)


def _pick(estimates: dict[int, QueueEstimate], wanted: set[int]) -> dict[int, QueueEstimate]:
    return {run_id: estimates[run_id] for run_id in wanted if run_id in estimates}


log = logging.getLogger(__name__)
_last_said = [-math.inf]  # when this process last logged that it has no fresh stored forecast (_say)


def _fresh(forecast: stored.StoredForecast | None, settings: Settings) -> stored.StoredForecast | None:
    """``forecast`` if younger than queue_forecast_stale_s, else None (missing, or the worker stopped storing it)."""
    if forecast is not None and (utcnow() - forecast.made_at).total_seconds() <= settings.queue_forecast_stale_s:
        return forecast
    return None


def _say_computed(forecast: stored.StoredForecast | None, settings: Settings) -> None:
    """Log, at most once a minute, that this process forecasts a short queue itself for want of a fresh stored one."""
    _say(forecast, settings, "this API process computes it itself")


def _say_stale(forecast: stored.StoredForecast | None, settings: Settings) -> None:
    """Log, at most once a minute, that a long queue is answered from a stale stored forecast (or none)."""
    _say(forecast, settings, "the API answers from it: a queue this long is not forecast on a request")


def _say(forecast: stored.StoredForecast | None, settings: Settings, what: str) -> None:
    if _clock() - _last_said[0] >= 60:
        _last_said[0] = _clock()
        age = "none is stored" if forecast is None else f"the stored one is from {forecast.made_at:%Y-%m-%d %H:%M:%S} UTC"
        log.warning("no queue forecast newer than %.0f s in the database (%s; is the control worker's beat running?): %s",
                    settings.queue_forecast_stale_s, age, what)  # fmt: skip


def _not_yet_forecast(run_id: int, made_at: datetime | None, settings: Settings) -> QueueEstimate:
    """A run the stored forecast lacks (submitted or requeued after it was made), in a queue too long to forecast here."""
    if made_at is None:
        return QueueEstimate(run_id, None, None, "no queue forecast is stored yet (is the control worker's beat running?); "
                             f"its place comes with the first one, every {settings.queue_forecast_interval_s:g} s")  # fmt: skip
    return QueueEstimate(run_id, None, None, f"{NOT_YET} ({made_at:%H:%M:%S} UTC); "
                         f"its place comes with the next one, within {settings.queue_forecast_interval_s:g} s")  # fmt: skip


def _recent_estimates(session: Session, settings: Settings, wanted: set[int]) -> dict[int, QueueEstimate]:
    """The shared forecast of this database and settings. One missing a wanted run is rebuilt
    before answering; one older than the TTL is rebuilt by a background thread while requests
    answer from the old one (a request never waits ~0.4 s for a refresh it does not need).
    A TTL of 0 rebuilds it on every request."""
    key = (session.get_bind().engine.url.render_as_string(hide_password=True), settings.model_dump_json())
    with _recent_lock:
        recent = _recent.setdefault(key, _Recent())
    if not wanted <= recent.estimates.keys() or settings.queue_forecast_ttl_s == 0:  # a TTL of 0: always fresh
        _refresh(recent, session, settings, asked_at=_clock(), blocking=True)
    elif _clock() - recent.made_at >= settings.queue_forecast_ttl_s and recent.refreshing.acquire(blocking=False):
        recent.refreshing.release()
        answer = recent.estimates  # this request's answer, whether or not the refresh lands first
        bind, asked_at = session.get_bind(), _clock()

        def refresh_in_background() -> None:
            with Session(bind) as own:
                _refresh(recent, own, settings, asked_at=asked_at, blocking=False)

        threading.Thread(target=refresh_in_background, name="queue-forecast", daemon=True).start()
        return answer
    return recent.estimates


def _refresh(recent: _Recent, session: Session, settings: Settings, *, asked_at: float, blocking: bool) -> None:
    if not recent.refreshing.acquire(blocking=blocking):
        return  # another thread is refreshing
    try:
        if recent.made_at < asked_at:  # nobody refreshed while this thread waited
            recent.estimates, recent.made_at = queue_estimates(session, settings), _clock()
    finally:
        recent.refreshing.release()


@dataclass(frozen=True)
class QueueItem:
    id: int
    name: str
    team: str
    user: str
    hardware: str
    priority: int
    submitted_at: datetime
    estimate: QueueEstimate


@dataclass(frozen=True)
class QueuePage:
    items: list[QueueItem]
    next_cursor: str | None  # pass as ``after`` for the next page; None: this is the last one
    forecast_made_at: datetime | None  # the stored forecast the page is read from; None: computed here (a short queue)


Q = TypeVar("Q", bound=Select[Unpack[tuple[Any, ...]]])  # any select, whatever its columns

# A cursor is the last item's place: "r<rank>" in the forecast's order, or "n<run id>" among
# the runs queued since the forecast was made (listed after every forecast run, by id).
CURSOR_PATTERN = r"^(r|n)[0-9]{1,12}$"


def list_queue(session: Session, principal: Principal, settings: Settings, team: str | None = None, *,
               limit: int = 1000, after: str | None = None, offset: int = 0) -> QueuePage:  # fmt: skip
    """The caller's teams' queued runs (a global admin: every team's), soonest expected start first;
    runs not expected to start last, then runs the stored forecast does not have yet (queued since).
    One page: ``limit`` items after the cursor ``after`` (and the first ``offset`` of those).

    A page is ``limit`` rows of the stored forecast's rank index (a member's: of its teams'), joined
    to their runs by primary key, whatever the queue's length. The stored forecast answers even when
    older than queue_forecast_stale_s (the page says how old); only a short queue (at most
    queue_forecast_inline_max runs) is forecast here instead, when the stored one is stale or lacks a run.
    """
    forecast = stored.read_forecast(session)  # the marker only: one primary-key read
    short = forecast.size < settings.queue_forecast_inline_max if forecast is not None else _queued_at_most(session, settings.queue_forecast_inline_max)
    if short and _fresh(forecast, settings) is None:
        _say_computed(forecast, settings)
        return _computed_page(session, principal, settings, team, limit, after, offset)
    if forecast is None or (utcnow() - forecast.made_at).total_seconds() > settings.queue_forecast_stale_s:
        _say_stale(forecast, settings)
    page = _stored_page(session, principal, settings, team, limit, after, offset, forecast)
    if short and any(item.estimate.position is None and item.estimate.reason.startswith(NOT_YET) for item in page.items):
        return _computed_page(session, principal, settings, team, limit, after, offset)  # cheap enough to forecast the new runs here
    return page


NOT_YET = "queued after the latest queue forecast"


def _queued_at_most(session: Session, n: int) -> bool:
    """Whether at most ``n`` runs are queued (reads at most n + 1 index entries)."""
    return len(session.scalars(select(Run.id).where(Run.status == RunStatus.QUEUED.value).limit(n + 1)).all()) <= n


def _visible(query: Q, team_id: Any, principal: Principal, team: str | None) -> Q:
    """``query`` kept to the caller's teams (a global admin: every team), and to ``team`` if named."""
    if not principal.is_admin:
        query = query.where(team_id.in_(sorted(principal.roles)))
    if team:
        query = query.where(team_id == select(Team.id).where(Team.name == team).scalar_subquery())
    return query


def _stored_page(session: Session, principal: Principal, settings: Settings, team: str | None, limit: int,
                 after: str | None, offset: int, forecast: stored.StoredForecast | None) -> QueuePage:  # fmt: skip
    E = StoredQueueEstimate
    items: list[QueueItem] = []
    after = after or "r0"
    if after.startswith("r") and forecast is not None:
        keys = _visible(select(E.run_id, E.rank, E.position, E.estimated_start_at, E.reason).where(E.rank > int(after[1:])), E.team_id, principal, team)
        keys_q = keys.order_by(E.rank).offset(offset).limit(limit).subquery()
        rows = sorted(session.execute(
            select(keys_q, Run.name, Run.status, Team.name.label("team"), User.name.label("user"), Run.hardware, Run.priority, Run.submitted_at)
            .outerjoin(Run, Run.id == keys_q.c.run_id)
            .outerjoin(Team, Team.id == Run.team_id)
            .outerjoin(User, User.id == Run.user_id)
        ).all(), key=lambda r: r.rank)  # sorted here, not in SQL: a page's rows, not the queue
        # A run started or cancelled since the forecast keeps its row until the next one: skipped,
        # but the cursor moves past it (a page may hold fewer items than rows read).
        items = [QueueItem(r.run_id, r.name, r.team, r.user, r.hardware, r.priority, r.submitted_at,
                           QueueEstimate(r.run_id, r.position, r.estimated_start_at, r.reason))
                 for r in rows if r.status == RunStatus.QUEUED.value]  # fmt: skip
        if len(rows) == limit:
            return QueuePage(items, f"r{rows[-1].rank}", forecast.made_at)
        if offset and not rows:  # the offset went past the forecast's runs: the rest of it skips new ones
            offset -= session.scalar(_visible(select(func.count()).where(E.rank > int(after[1:])), E.team_id, principal, team)) or 0
        after, offset, limit = "n0", 0 if rows else offset, limit - len(rows)
    # The runs the forecast does not have (queued since it was made; every queued run if none is stored), by id.
    new_after = int(after[1:]) if after.startswith("n") else 0
    query = _visible(
        select(Run.id, Run.name, Team.name.label("team"), User.name.label("user"), Run.hardware, Run.priority, Run.submitted_at)
        .join(Team, Team.id == Run.team_id)
        .join(User, User.id == Run.user_id)
        .where(Run.status == RunStatus.QUEUED.value, Run.id > new_after, ~exists().where(E.run_id == Run.id)),
        Run.team_id, principal, team,
    )  # fmt: skip
    new = session.execute(query.order_by(Run.id).offset(offset).limit(limit)).all()
    made_at = forecast.made_at if forecast is not None else None
    items += [QueueItem(r.id, r.name, r.team, r.user, r.hardware, r.priority, r.submitted_at, _not_yet_forecast(r.id, made_at, settings)) for r in new]
    return QueuePage(items, f"n{new[-1].id}" if len(new) == limit else None, made_at)


def _computed_page(session: Session, principal: Principal, settings: Settings, team: str | None, limit: int, after: str | None, offset: int) -> QueuePage:
    """A short queue's page, forecast in this process (reused for queue_forecast_ttl_s); the cursor is the caller's own rank."""
    query = _visible(
        select(Run.id, Run.name, Team.name.label("team"), User.name.label("user"), Run.hardware, Run.priority, Run.submitted_at)
        .join(Team, Team.id == Run.team_id)
        .join(User, User.id == Run.user_id)
        .where(Run.status == RunStatus.QUEUED.value),
        Run.team_id, principal, team,
    )  # fmt: skip
    rows = session.execute(query).all()
    estimates = _recent_estimates(session, settings, {r.id for r in rows}) if rows else {}
    items = [QueueItem(r.id, r.name, r.team, r.user, r.hardware, r.priority, r.submitted_at, estimates[r.id]) for r in rows if r.id in estimates]
    items.sort(key=lambda i: stored.queue_order(i.estimate))
    start = (int(after[1:]) if after and after.startswith("r") else len(items) if after else 0) + offset
    page = items[start : start + limit]
    return QueuePage(page, f"r{start + limit}" if start + limit < len(items) else None, None)
