"""/runs: submit, list, read, cancel; a run's events, metrics and log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Query, Request, Response

from service.core.errors import InvalidInput, Issue
from service.core.hooks import call_on_submit_hook
from service.core.models import utcnow
from service.http.deps import ArtifactStoreDep, ByteOffset, CurrentUser, Id, SessionDep, SettingsDep
from service.queue import positions as queue, stored
from service.queue.schemas import QueueFields
from service.runs import attempts, cancel as cancelling, logs as stored_logs, metrics as metric_pages, queries, submit as submission
from service.runs.logs import LogSlice
from service.runs.schemas import MetricOut, RunCancelled, RunCreate, RunEventOut, RunOut, RunPage, RunsCreated

router = APIRouter(prefix="/runs", tags=["runs"])


async def limit_body_size(request: Request, settings: SettingsDep) -> None:
    """Refuse a body over CADDIE_MAX_SPEC_BYTES before pydantic looks at it; a script run's
    body may be larger by its files in base64 (their own limits are checked field by field)."""
    body = await request.body()
    limit = settings.max_request_bytes if b'"script"' in body else settings.max_spec_bytes
    if len(body) > limit:
        raise InvalidInput([Issue(("body",), f"run spec is {len(body)} bytes; the limit is {limit} bytes", len(body))])


@router.post("", status_code=201, response_model=RunsCreated, dependencies=[Depends(limit_body_size)])
def submit_runs(
    spec: RunCreate,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    background: BackgroundTasks,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> RunsCreated:
    """One QUEUED run per seed, in one group. A retry with the same Idempotency-Key returns the same runs."""
    group_key, runs, replayed = submission.submit_runs(session, user, spec, settings, idempotency_key=idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    elif settings.on_submit_hook:
        background.add_task(call_on_submit_hook, settings.on_submit_hook, [r.id for r in runs])
    return RunsCreated(group_key=group_key, runs=[RunOut.from_run(r, settings=settings) for r in runs])


@router.get("", response_model=RunPage)
def list_runs(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    status: Annotated[str | None, Query(description="QUEUED, RUNNING, ... (comma-separated for several)")] = None,
    team: Annotated[str | None, Query(max_length=100)] = None,
    user_name: Annotated[str | None, Query(alias="user", max_length=100)] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200, description="text in name or notes")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    items, next_cursor = queries.list_runs(
        session, user, status=status, team=team, user=user_name, group=group, q=q, limit=limit, cursor=cursor, with_forecast=True
    )
    # Validated once and serialised by pydantic-core here; handing FastAPI a
    # Response skips its second validation pass (this is the hot endpoint).
    # QUEUED rows say where they stand, from the stored forecast read with the page (one query).
    estimates = queue.estimates_from(session, settings, [(row.id, row.status) for row in items], stored.forecast_in_rows(items))
    page = RunPage.model_validate({"items": [{**row._asdict(), **QueueFields.of(estimates.get(row.id))} for row in items], "next_cursor": next_cursor})
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: Id, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> RunOut:
    """A QUEUED run also says where it stands: queue_position, estimated_start_at, waiting_reason;
    every run lists its attempts (attempt_history)."""
    run, forecast = queries.get_run_and_forecast(session, user, run_id)  # one query: a live page polls every 2 s
    estimate = queue.estimates_from(session, settings, [(run.id, run.status)], forecast).get(run.id)
    history = attempts.load_attempts(session, run, utcnow())  # its events, one indexed read (none for a run never launched)
    return RunOut.from_run(run, settings=settings, **QueueFields.of(estimate), attempt_history=history)


@router.post("/{run_id}/cancel", response_model=RunCancelled)
def cancel_run(
    run_id: Id,
    user: CurrentUser,
    session: SessionDep,
    wait_s: Annotated[float, Query(ge=0, le=10, description="wait up to this long for the worker to stop an active run")] = 0,
) -> RunCancelled:
    """QUEUED: cancelled now. PROVISIONING/RUNNING: cancel requested; the worker stops it. Finished: 409.
    ``cancel_outcome`` says which, or that the run finished before the cancel took effect (within ``wait_s``)."""
    run = cancelling.await_outcome(session, cancelling.cancel_run(session, user, run_id), wait_s)
    outcome, note = cancelling.outcome_of(run)
    return RunCancelled(**RunOut.from_run(queries.get_run(session, user, run_id)).model_dump(), cancel_outcome=outcome.value, cancel_note=note)


@router.get("/{run_id}/events", response_model=list[RunEventOut])
def run_events(run_id: Id, user: CurrentUser, session: SessionDep) -> list[RunEventOut]:
    return [RunEventOut.of(e) for e in queries.list_events(session, user, run_id)]


@router.get("/{run_id}/metrics", response_model=list[MetricOut])
def run_metrics(
    run_id: Id,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    response: Response,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="points to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=metric_pages.PAGE_MAX, description="points per page")] = metric_pages.PAGE_MAX,
) -> list[MetricOut]:
    """The run's metric points by step, one page at a time: while more follow, the
    ``Link: <...>; rel="next"`` header names the next page."""
    rows, more = metric_pages.metrics_page(session, user, run_id, offset, limit)
    if more:
        response.headers["Link"] = f'<{request.url.include_query_params(offset=offset + len(rows), limit=limit)}>; rel="next"'
    return [MetricOut.of(m) for m in rows]


@router.get("/{run_id}/logs", response_model=LogSlice)
def run_logs(run_id: Id, user: CurrentUser, session: SessionDep, store: ArtifactStoreDep, offset: ByteOffset = 0) -> LogSlice:
    return stored_logs.read_log(session, user, run_id, offset, store=store)  # an ended run's log is in the store
