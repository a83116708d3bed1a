"""/queue: where each queued run stands and when it should start (the scheduler's policy played forward)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import CurrentUser, SessionDep, SettingsDep
from service.queue import positions as domain
from service.queue.schemas import QueueItemOut

router = APIRouter(prefix="/queue", tags=["runs"])


@router.get("", response_model=list[QueueItemOut])
def list_queue(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    team: Annotated[str | None, Query(max_length=100, description="only this team's runs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many runs")] = 1000,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="skip this many runs (the next page)")] = 0,
) -> list[QueueItemOut]:
    """Your teams' queued runs, soonest expected start first: position on their hardware (counting
    every team's runs), estimated start (null: not expected to start) and why each waits. Paged:
    ``limit`` runs (at most 1,000) after the first ``offset``."""
    return [QueueItemOut.of_item(item) for item in domain.list_queue(session, user, settings, team, limit=limit, offset=offset)]
