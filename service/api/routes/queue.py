"""/queue: where each queued run stands and when it should start (the scheduler's policy played forward)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.core.models import utcnow
from service.http.deps import CurrentUser, SessionDep, SettingsDep
from service.queue import positions as domain
from service.queue.schemas import QueueItemOut

router = APIRouter(prefix="/queue", tags=["runs"])


@router.get("", response_model=list[QueueItemOut])
def list_queue(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    team: Annotated[str | None, Query(max_length=100, description="only this team's runs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many runs")] = 1000,
    after: Annotated[str | None, Query(pattern=domain.CURSOR_PATTERN, description="the previous page's X-Next-Cursor header: the page after it")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="skip this many runs (after the cursor, if any)")] = 0,
) -> list[QueueItemOut]:
    """Your teams' queued runs, soonest expected start first: position on their hardware (counting
    every team's runs), estimated start (null: not expected to start) and why each waits; runs
    queued since the latest stored forecast come last. Paged: ``limit`` runs (at most 1,000); the
    ``X-Next-Cursor`` header, absent on the last page, is the next page's ``after``. Each page costs
    the same whatever the queue's length. ``X-Queue-Forecast-Made-At`` and ``X-Queue-Forecast-Age-S``
    say which stored forecast the figures come from (absent: a short queue, forecast by this API);
    a forecast older than queue_forecast_stale_s (the control worker is down) still answers."""
    page = domain.list_queue(session, user, settings, team, limit=limit, after=after, offset=offset)
    if page.next_cursor is not None:
        response.headers["X-Next-Cursor"] = page.next_cursor
    if page.forecast_made_at is not None:
        response.headers["X-Queue-Forecast-Made-At"] = page.forecast_made_at.isoformat()
        response.headers["X-Queue-Forecast-Age-S"] = f"{max(0.0, (utcnow() - page.forecast_made_at).total_seconds()):.1f}"
    return [QueueItemOut.of_item(item) for item in page.items]
