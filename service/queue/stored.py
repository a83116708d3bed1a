"""The stored queue forecast (I/O): written by the control worker, read by every API replica.

    control worker, every queue_forecast_interval_s (worker/control/forecast.py)
        positions.queue_estimates(...) ──▶ store_forecast()   one transaction: every row replaced
    API, any replica (service/queue/positions.py)
        read_forecast(ids)    the marker and the asked-for rows: one primary-key lookup

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
