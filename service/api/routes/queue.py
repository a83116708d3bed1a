"""/queue: where each queued run stands and when it should start (the scheduler's policy played forward)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service import queue as domain
from service.api.deps import CurrentUser, SessionDep, SettingsDep
from service.queue_schemas import QueueItemOut

router = APIRouter(prefix="/queue", tags=["runs"])


@router.get("", response_model=list[QueueItemOut])
def list_queue(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    team: Annotated[str | None, Query(max_length=100, description="only this team's runs")] = None,
) -> list[QueueItemOut]:
    """Your teams' queued runs, soonest expected start first: position on their hardware (counting
    every team's runs), estimated start (null: not expected to start) and why each waits."""
    return [QueueItemOut.of_item(item) for item in domain.list_queue(session, user, settings, team)]
