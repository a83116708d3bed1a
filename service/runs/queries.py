"""Reading runs (no HTTP): one run, pages of runs, a run's events and metric points.

Visibility rule used everywhere here: a run belongs to its team; only members
of that team and global admins can see it. To everyone else it does not exist
(``NotFound``), so run ids leak nothing.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import Select, bindparam, func, or_, select
from sqlalchemy.orm import Session, joinedload

from service.core.bodies import ID_MAX
from service.core.errors import InvalidInput, Issue, NotFound
from service.core.models import Metric, Run, RunEvent, Team, User
from service.core.status import RunStatus
from service.queue import stored
from service.runs.schemas import NOT_COLUMNS, RunOut
from service.teams.tokens import Principal


def run_query() -> Select[Run]:
    # Team and user names come in the same query (no N+1 when serialising).
    return select(Run).options(joinedload(Run.team, innerjoin=True), joinedload(Run.user, innerjoin=True))


# Built once (the ids bound at execution): a submit reads its new runs back through it.
_WITH_NAMES = run_query().where(Run.id.in_(bindparam("ids", expanding=True))).order_by(Run.id)


def with_names(session: Session, ids: list[int]) -> list[Run]:
    return list(session.scalars(_WITH_NAMES, {"ids": ids}))


def get_run(session: Session, principal: Principal, run_id: int) -> Run:
    run = session.scalar(run_query().where(Run.id == run_id))
    if run is None or not principal.can_see_team(run.team_id):
        raise NotFound("run", run_id)
    return run


# Built once (a bound run id): SQLAlchemy reuses its cache key and compiled form; building it per
# request cost as much CPU as the query itself (a live run page polls it every 2 s).
_RUN_AND_FORECAST = stored.with_stored_estimate(run_query().where(Run.id == bindparam("run_id")), Run.id)


def get_run_and_forecast(session: Session, principal: Principal, run_id: int) -> tuple[Run, stored.StoredForecast | None]:
    """``get_run``, and in the same query the stored queue forecast's row for the run (a queued run's page shows it)."""
    row = session.execute(_RUN_AND_FORECAST, {"run_id": run_id}).first()
    if row is None or not principal.can_see_team(row[0].team_id):
        raise NotFound("run", run_id)
    return row[0], stored.forecast_in_row(run_id, row)


def encode_cursor(run_id: int) -> str:
    return base64.urlsafe_b64encode(f"r{run_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("r"):
            raise ValueError(raw)
        run_id = int(raw[1:])
        # A cursor is an id plus one at most (the web page's live poll): anything else was not ours.
        if not 1 <= run_id <= ID_MAX + 1:
            raise ValueError(raw)
        return run_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput([Issue(("query", "cursor"), "not a cursor from a previous page", cursor)]) from None


def parse_statuses(status: str | None) -> list[str]:
    """``QUEUED,RUNNING`` -> ["QUEUED", "RUNNING"] (case-insensitive)."""
    if not status:
        return []
    out = []
    for part in status.split(","):
        part = part.strip().upper()
        if part not in RunStatus.__members__:
            raise InvalidInput([Issue(("query", "status"), f"must be one of {', '.join(RunStatus.__members__)} (comma-separated)", status)])
        out.append(part)
    return out


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# Columns of a run listing: every Run column the API shows, plus the team and
# user names (one query, no ORM objects: the list endpoint is the hot path).
_LIST_COLUMNS = [Run.__table__.c[name] for name in RunOut.model_fields if name not in ("team", "user", *NOT_COLUMNS)]


# Built once: statements are immutable, and building one per request costs more
# than running it.
_LIST_QUERY = (
    select(*_LIST_COLUMNS, Team.name.label("team"), User.name.label("user"))
    .join(Team, Team.id == Run.team_id)
    .join(User, User.id == Run.user_id)
)

# A page of runs says where its queued runs stand: their stored estimates come in the same query.
_LIST_QUERY_WITH_FORECAST = stored.with_stored_estimate(_LIST_QUERY, Run.id)

# The unfiltered pages (what dashboards and `caddie runs` poll), built whole once with bound values:
# (with_forecast, member, after a cursor) -> statement. A page built per request spent ~0.4 ms of CPU on its cache key.
_PAGES = {
    (with_forecast, member, paged): (
        (_LIST_QUERY_WITH_FORECAST if with_forecast else _LIST_QUERY)
        .where(*([Run.team_id.in_(bindparam("teams", expanding=True))] if member else []),
               *([Run.id < bindparam("before")] if paged else []))  # fmt: skip
        .order_by(Run.id.desc())
        .limit(bindparam("limit"))
    )
    for with_forecast in (False, True)
    for member in (False, True)
    for paged in (False, True)
}


def list_runs(
    session: Session,
    principal: Principal,
    *,
    status: str | None = None,
    team: str | None = None,
    user: str | None = None,
    group: str | None = None,
    q: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    with_forecast: bool = False,
) -> tuple[list[Any], str | None]:
    """Newest first (id descending), one page of ``limit``, keyset-paginated:
    the cursor is the last id of the previous page, so pages never repeat or
    skip a run even while new runs arrive.

    Returns rows that read like runs (``row.id``, ``row.status``, ...) with
    ``row.team`` and ``row.user`` holding the names, and the next cursor. ``with_forecast``: each
    row also carries the stored queue forecast's row for it (``stored.forecast_in_rows``), in the same query.
    """
    if not principal.is_admin and not principal.roles:
        return [], None
    if not (status or team or user or group or q):
        member = not principal.is_admin
        params = {"limit": limit + 1, **({"teams": sorted(principal.roles)} if member else {}), **({"before": decode_cursor(cursor)} if cursor else {})}
        rows = list(session.execute(_PAGES[with_forecast, member, bool(cursor)], params).all())
        return rows[:limit], encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    query = _LIST_QUERY_WITH_FORECAST if with_forecast else _LIST_QUERY
    if not principal.is_admin:
        query = query.where(Run.team_id.in_(sorted(principal.roles)))
    statuses = parse_statuses(status)
    if len(statuses) == 1:
        query = query.where(Run.status == statuses[0])
    elif statuses:
        query = query.where(Run.status.in_(statuses))
    if team:
        query = query.where(Run.team_id == select(Team.id).where(Team.name == team).scalar_subquery())
    if user:
        query = query.where(Run.user_id == select(User.id).where(User.name == user).scalar_subquery())
    if group:
        query = query.where(Run.group_key == group)
    if q:
        pattern = _like_pattern(q)
        query = query.where(or_(Run.name.ilike(pattern, escape="\\"), Run.notes.ilike(pattern, escape="\\")))
    if cursor:
        query = query.where(Run.id < decode_cursor(cursor))
    rows = list(session.execute(query.order_by(Run.id.desc()).limit(limit + 1)).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def list_events(session: Session, principal: Principal, run_id: int) -> list[RunEvent]:
    visible_run(session, principal, run_id)
    return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


# What charts need of a metric row, read as plain rows: for a run with 20,000
# points this took 150-190 ms against 416 ms for ORM objects (SQLite, a loaded 2-core machine).
_POINT_COLUMNS = (Metric.kind, Metric.step, Metric.train_loss, Metric.val_loss, Metric.val_bpb, Metric.elapsed_ms)


def metric_points(session: Session, principal: Principal, run_id: int) -> list[Any]:
    """The points of the run's latest attempt, as rows with the Metric columns' names
    (``row.step``, ``row.val_bpb``, ...): a requeued run's curve starts again at step 1, and
    drawing every attempt on one axis would zigzag (the API's /metrics keeps them all)."""
    visible_run(session, principal, run_id)
    latest = select(func.max(Metric.attempt)).where(Metric.run_id == run_id).scalar_subquery()
    query = select(*_POINT_COLUMNS).where(Metric.run_id == run_id, Metric.attempt == latest).order_by(Metric.step, Metric.id)
    return list(session.execute(query))


def visible_run(session: Session, principal: Principal, run_id: int) -> tuple[int, str]:
    row = session.execute(select(Run.team_id, Run.status).where(Run.id == run_id)).first()
    if row is None or not principal.can_see_team(row.team_id):
        raise NotFound("run", run_id)
    return row.team_id, row.status
