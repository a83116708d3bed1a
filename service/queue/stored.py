"""The stored queue forecast (I/O): written by the control worker, read by every API replica.

    control worker, every queue_forecast_interval_s (worker/control/forecast.py)
        positions.queue_estimates(...) ──▶ store_forecast()   one transaction: the rows that changed rewritten
    API, any replica (service/queue/positions.py)
        read_forecast(ids)    the marker and the asked-for rows: one primary-key lookup
        with_stored_estimate(query)   or both beside one run, in the query that reads the run

Computing the forecast reads the whole queue and its billing (~0.4 s at 10,000 queued runs);
done once by a worker, every API process answers from the same figures and no request
computes it. Row ``run_id = 0`` (no run has id 0) marks the forecast itself: when it was
made and, in ``position``, how many queued runs it covers, so an empty forecast is still
a fresh one, and an API can tell a stale forecast (worker down) from none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Row, Select, delete, insert, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from service.core.models import StoredQueueEstimate
from service.queue.forecast import QueueEstimate

MARKER_ID = 0


@dataclass(frozen=True)
class StoredForecast:
    made_at: datetime
    size: int  # queued runs it covers
    estimates: dict[int, QueueEstimate]  # those asked for that it has


def store_forecast(session: Session, estimates: Mapping[int, QueueEstimate], made_at: datetime, teams: Mapping[int, int]) -> int:
    """Make ``estimates`` (made at ``made_at``; ``teams``: each run's team id) the stored forecast, committed;
    returns the run rows written. Each run gets its rank in GET /queue's order, so a page is a keyset read of an index.

    Only the rows that changed are rewritten: between two forecasts of a quiet queue most estimates are the
    same (200 of 10,000 changed in 5 s on the benchmark's queue), and rewriting all of them every 10 s left
    PostgreSQL 1,000 dead rows a second to vacuum and as much WAL. Readers take the forecast's time from
    the marker row, so a row keeps the ``made_at`` of the forecast that last changed it."""
    if session.get_bind().dialect.name == "postgresql":
        # Two control workers at once would each write the same run ids;
        # a transaction-scoped advisory lock makes the second wait for the first.
        session.execute(text("SELECT pg_advisory_xact_lock(7282)"))
    E = StoredQueueEstimate
    wanted = {e.run_id: (e.position, e.estimated_start_at, e.reason, rank, teams.get(e.run_id))
              for rank, e in enumerate(sorted(estimates.values(), key=queue_order), start=1)}  # fmt: skip
    held = {r[0]: tuple(r[1:]) for r in session.execute(select(E.run_id, E.position, E.estimated_start_at, E.reason, E.rank, E.team_id))}
    marker = held.pop(MARKER_ID, None)
    stale = [run_id for run_id, row in held.items() if wanted.get(run_id) != row]
    fresh = [run_id for run_id, row in wanted.items() if held.get(run_id) != row]
    if marker is None or len(stale) + len(fresh) > len(wanted):  # most rows moved (a busy queue): one delete and one bulk write
        session.execute(delete(E))
        stale, fresh = [], list(wanted)
    else:
        session.execute(delete(E).where(E.run_id == MARKER_ID))
    for i in range(0, len(stale), _IDS_PER_STATEMENT):  # bounded: PostgreSQL takes at most 65,535 parameters a statement
        session.execute(delete(E).where(E.run_id.in_(stale[i : i + _IDS_PER_STATEMENT])))
    rows = [{"run_id": MARKER_ID, "position": len(estimates), "estimated_start_at": None, "reason": "", "made_at": made_at, "rank": None, "team_id": None}]
    rows += [dict(zip(_ROW_COLUMNS, (run_id, *wanted[run_id], made_at), strict=True)) for run_id in fresh]
    if session.get_bind().dialect.driver == "psycopg":  # PostgreSQL through psycopg 3, the driver caddie's URLs name
        _copy_rows(session.connection().connection.dbapi_connection, rows)
    else:
        session.execute(insert(E), rows)
    session.commit()
    return len(fresh)


_IDS_PER_STATEMENT = 10_000
_ROW_COLUMNS = ("run_id", "position", "estimated_start_at", "reason", "rank", "team_id", "made_at")


def _copy_rows(dbapi: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """PostgreSQL's COPY, on the session's connection (its transaction): 50,000 rows in ~0.2 s where the
    ORM's executemany took ~1.8 s of a forecast's 3 s."""
    columns = list(rows[0])
    with dbapi.cursor() as cursor, cursor.copy(f"COPY {StoredQueueEstimate.__tablename__} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def queue_order(e: QueueEstimate) -> tuple[bool, datetime, int, int]:
    """GET /queue's order: soonest expected start first, runs not expected to start last; then position, id."""
    return (e.estimated_start_at is None, e.estimated_start_at or _EARLIEST, e.position or 0, e.run_id)


_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)  # stands in for the start of runs sorted last anyway


def read_forecast(session: Session, run_ids: Iterable[int] = (), *, every: bool = False) -> StoredForecast | None:
    """The stored forecast's estimates of ``run_ids`` (``every``: all of them); None if none is stored.
    One query: the marker row comes with the rows asked for (a page of runs: at most a few hundred ids)."""
    E = StoredQueueEstimate
    query = select(E.run_id, E.position, E.estimated_start_at, E.reason, E.made_at)
    if not every:
        query = query.where(E.run_id.in_(sorted({MARKER_ID, *run_ids})))
    made_at, size, found = None, 0, {}
    for r in session.execute(query):
        if r.run_id == MARKER_ID:
            made_at, size = r.made_at, r.position or 0
        else:
            found[r.run_id] = QueueEstimate(r.run_id, r.position, r.estimated_start_at, r.reason)
    return StoredForecast(made_at, size, found) if made_at is not None else None


_RUN_ESTIMATE, _MARKER = aliased(StoredQueueEstimate, name="run_estimate"), aliased(StoredQueueEstimate, name="forecast_marker")


def with_stored_estimate(query: Select[Any], run_id: ColumnElement[int] | InstrumentedAttribute[int]) -> Select[Any]:
    """``query`` (one row per run) with its run's stored estimate and the forecast's marker beside it
    (outer joins: NULL when absent), so opening a queued run costs one query, as a list page does."""
    E, M = _RUN_ESTIMATE, _MARKER
    return (
        query.outerjoin(E, E.run_id == run_id)
        .outerjoin(M, M.run_id == MARKER_ID)
        .add_columns(E.position.label("q_position"), E.estimated_start_at.label("q_start"), E.reason.label("q_reason"),
                     M.made_at.label("q_made_at"), M.position.label("q_size"))  # fmt: skip
    )


def forecast_in_rows(rows: Sequence[Row[Any]]) -> StoredForecast | None:
    """What ``read_forecast`` returns for the runs of ``rows`` (of ``with_stored_estimate``, each with its ``id``)."""
    if not rows or rows[0].q_made_at is None:
        return None
    found = {r.id: QueueEstimate(r.id, r.q_position, r.q_start, r.q_reason) for r in rows if r.q_reason is not None}
    return StoredForecast(rows[0].q_made_at, rows[0].q_size or 0, found)


def forecast_in_row(run_id: int, row: Row[Any]) -> StoredForecast | None:
    """What ``read_forecast([run_id])`` returns, from a row of ``with_stored_estimate``."""
    if row.q_made_at is None:
        return None
    found = {run_id: QueueEstimate(run_id, row.q_position, row.q_start, row.q_reason)} if row.q_reason is not None else {}
    return StoredForecast(row.q_made_at, row.q_size or 0, found)
