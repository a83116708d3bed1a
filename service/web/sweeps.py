"""The sweep pages: /sweeps (a team's sweeps) and /sweeps/{id} (its figures, its trials, stop and resume).
Thin: the data is service.sweeps.store's, as the API serves it; the figures are service.web.sweep_charts'."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from service.core.errors import NotFound
from service.http import session as web_session
from service.http.deps import SessionDep
from service.sweeps import curves as trial_points, store
from service.web import sweep_charts
from service.web.routes import CsrfField, PageRoute, RowId, User, back, render

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request, user: User, session: SessionDep) -> HTMLResponse:
    items = [store.sweep_out(session, s, with_trials=False) for s in store.list_sweeps(session, user, limit=200)[0]]
    return render(request, "sweeps.html", user, sweeps=items)


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: RowId, user: User, session: SessionDep) -> HTMLResponse:
    sweep = store.get_sweep(session, user, sweep_id)
    out = store.sweep_out(session, sweep, with_trials=True)
    trials = out.trials or []
    points = trial_points.run_points(session, [i for t in trials for i in t.run_ids])
    curves = {t.number: store.mean_curve({i: points.get(i, []) for i in t.run_ids}) for t in trials}
    figures = {name: fig for name, fig in (
        ("best", sweep_charts.best_so_far(trials)),
        ("parallel", sweep_charts.parallel_coordinates(trials, sweep.spec["space"])),
        ("importance", sweep_charts.importance(out.importance)),
        ("curves", sweep_charts.trial_curves(trials, curves)),
    ) if fig is not None}  # fmt: skip
    can_change = sweep.user_id == user.user_id or user.can_manage_team(sweep.team_id)
    return render(request, "sweep.html", user, s=out, figures=figures, can_change=can_change)


@router.post("/sweeps/{sweep_id}/{action}")
def change_sweep(request: Request, sweep_id: RowId, action: str, user: User, session: SessionDep, csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    if action == "stop":
        store.stop_sweep(session, user, sweep_id)
    elif action == "resume":
        store.resume_sweep(session, user, sweep_id)
    else:
        raise NotFound("action", action)
    return back(f"/sweeps/{sweep_id}")

