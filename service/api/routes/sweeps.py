"""/sweeps: submit, list, read, stop, resume (service.sweeps). A sweep belongs to its team: other teams get 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.http.deps import CurrentUser, Id, SessionDep, SettingsDep
from service.sweeps import store
from service.sweeps.schemas import SweepCreate, SweepOut, SweepPage

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post("", status_code=201, response_model=SweepOut)
def submit_sweep(body: SweepCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> SweepOut:
    """Store a sweep (running); the scheduler's next tick submits its first trials as run groups."""
    sweep = store.create_sweep(session, user, body, settings)
    return store.sweep_out(session, sweep, with_trials=True)


@router.get("", response_model=SweepPage)
def list_sweeps(
    user: CurrentUser,
    session: SessionDep,
    team: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")] = None,
) -> SweepPage:
    """Newest first; ``next_cursor`` (null on the last page) gives the next page."""
    items, next_cursor = store.list_sweeps(session, user, team=team, limit=limit, cursor=cursor)
    return SweepPage(items=[store.sweep_out(session, s, with_trials=False) for s in items], next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep_id: Id, user: CurrentUser, session: SessionDep) -> SweepOut:
    return store.sweep_out(session, store.get_sweep(session, user, sweep_id), with_trials=True)


@router.post("/{sweep_id}/stop", response_model=SweepOut)
def stop_sweep(sweep_id: Id, user: CurrentUser, session: SessionDep) -> SweepOut:
    """No new trials; trials whose runs are all still QUEUED are cancelled; running trials finish. Not running: 409."""
    return store.sweep_out(session, store.stop_sweep(session, user, sweep_id), with_trials=True)


@router.post("/{sweep_id}/resume", response_model=SweepOut)
def resume_sweep(sweep_id: Id, user: CurrentUser, session: SessionDep) -> SweepOut:
    """A stopped sweep runs again from where it stood. Not stopped: 409."""
    return store.sweep_out(session, store.resume_sweep(session, user, sweep_id), with_trials=True)
