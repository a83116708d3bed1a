"""The stored queue forecast (I/O): written by the control worker, read by every API replica.

    control worker, every queue_forecast_interval_s (worker/control/forecast.py)
        positions.queue_estimates(...) ──▶ store_forecast()   one transaction: every row replaced
    API, any replica (service/queue/positions.py)
        read_forecast(ids)    the marker and the asked-for rows: two primary-key lookups

Computing the forecast reads the whole queue and its billing (~0.4 s at 10,000 queued runs);
done once by a worker, every API process answers from the same figures and no request
computes it. Row ``run_id = 0`` (no run has id 0) marks the forecast itself: when it was
made and, in ``position``, how many queued runs it covers, so an empty forecast is still
a fresh one, and an API can tell a stale forecast (worker down) from none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from service.core.models import StoredQueueEstimate
from service.queue.forecast import QueueEstimate

MARKER_ID = 0


@dataclass(frozen=True)
class StoredForecast:
    made_at: datetime
    size: int  # queued runs it covers
    estimates: dict[int, QueueEstimate]  # those asked for that it has


def store_forecast(session: Session, estimates: Mapping[int, QueueEstimate], made_at: datetime) -> None:
    """Replace the stored forecast by ``estimates`` (made at ``made_at``), committed."""
    if session.get_bind().dialect.name == "postgresql":
        # Two control workers at once would each delete and insert the same run ids;
        # a transaction-scoped advisory lock makes the second wait for the first.
        session.execute(text("SELECT pg_advisory_xact_lock(7282)"))
    session.execute(delete(StoredQueueEstimate))
    rows = [{"run_id": MARKER_ID, "position": len(estimates), "estimated_start_at": None, "reason": "", "made_at": made_at}]
    rows += [{"run_id": e.run_id, "position": e.position, "estimated_start_at": e.estimated_start_at, "reason": e.reason, "made_at": made_at}
             for e in estimates.values()]  # fmt: skip
    session.execute(insert(StoredQueueEstimate), rows)
    session.commit()


def read_forecast(session: Session, run_ids: Iterable[int] = (), *, every: bool = False) -> StoredForecast | None:
    """The stored forecast's estimates of ``run_ids`` (``every``: all of them); None if none is stored."""
    marker = forecast_marker(session)
    if marker is None:
        return None
    made_at, size = marker
    query = select(StoredQueueEstimate.run_id, StoredQueueEstimate.position, StoredQueueEstimate.estimated_start_at, StoredQueueEstimate.reason)
    if every:
        query = query.where(StoredQueueEstimate.run_id != MARKER_ID)
    else:
        ids = sorted(set(run_ids))
        if not ids:
            return StoredForecast(made_at, size, {})
        query = query.where(StoredQueueEstimate.run_id.in_(ids))  # a page of runs: at most a few hundred ids
    found = {r.run_id: QueueEstimate(r.run_id, r.position, r.estimated_start_at, r.reason) for r in session.execute(query)}
    return StoredForecast(made_at, size, found)


def forecast_marker(session: Session) -> tuple[datetime, int] | None:
    """(made_at, queued runs covered) of the stored forecast; None if none is stored."""
    row = session.execute(select(StoredQueueEstimate.made_at, StoredQueueEstimate.position).where(StoredQueueEstimate.run_id == MARKER_ID)).first()
    return (row.made_at, row.position or 0) if row else None
