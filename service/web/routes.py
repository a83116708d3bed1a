"""The web pages: thin routes that call the same domain functions as the REST API
and render templates. Mounted at ``/`` by service/api/app.py.

Pages are complete server-rendered HTML; static/caddie.js adds the live parts
(polling the REST API with the session cookie, reads only) and draws the
charts with the plotly.js that the ``plotly`` package ships (served from here).

Every state change is a POST of a form carrying the session's CSRF token
(``session.check_csrf``); the REST API takes the cookie for GETs only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Path as PathParam, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.billing import usage
from service.core.bodies import ID_MAX
from service.core.errors import DomainError, Forbidden, Gone, InvalidInput, Issue, NotFound, Unauthorized, Unavailable
from service.core.hardware import hardware_options
from service.core.hooks import call_on_submit_hook
from service.core.models import utcnow
from service.core.status import (
    ALL_VALUES,
    TERMINAL_VALUES,
    IllegalTransition,
    is_terminal,
)
from service.http import session as web_session
from service.http.deps import SessionDep, SettingsDep
from service.http.errors import STATUS
from service.queue import positions as queue, team_view
from service.results import queries
from service.results.groups import config_diff
from service.results.schemas import GroupDetail, LeaderboardEntry
from service.runs import artifacts as run_artifacts
from service.runs.attempts import run_attempts
from service.runs.cancel import cancel_run
from service.runs.logs import read_log
from service.runs.queries import (
    encode_cursor,
    get_run,
    get_run_and_forecast,
    list_events,
    list_runs,
    metric_points,
)
from service.runs.schemas import RunCreate, runs_on
from service.runs.scripts.spec import shared_config
from service.runs.spec import RESERVED_KNOBS
from service.runs.submit import submit_runs
from service.teams import accounts, tokens as security
from service.teams.tokens import Principal
from service.teams.webhook_url import masked as masked_webhook
from service.web import charts
from service.webhooks import history as webhook_history
from trainer.config import DEFAULT_STACK, STACKS, TrainerConfig

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
LOG_TAIL_BYTES = 64 * 1024
PAGE_SIZE = 50
STATUSES = ALL_VALUES

templates = Jinja2Templates(directory=HERE / "templates")


def _tojson_script(value: Any) -> Markup:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' (a run
    named '</script>' or '<!--' cannot end or confuse the block), as Django's json_script."""
    text = json.dumps(value, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


templates.env.filters["json_script"] = _tojson_script
# The script reads which statuses are final from the page, not from a copy of its own.
templates.env.globals["terminal_statuses"] = " ".join(TERMINAL_VALUES)
templates.env.filters["bytes"] = lambda n: "—" if n is None else f"{n:,}"
templates.env.filters["num"] = lambda x, digits=4: "—" if x is None else f"{x:.{digits}f}"
templates.env.filters["when"] = lambda d: "—" if d is None else d.strftime("%Y-%m-%d %H:%M:%S")
templates.env.filters["diff"] = config_diff
templates.env.filters["webhook_masked"] = masked_webhook


class PageRoute(APIRoute):
    """A page: domain errors become HTML pages (404 for what the caller may not see,
    as the API does), and a missing or stale sign-in sends the browser to /signin."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthorized:
                if request.url.path.startswith("/web/"):
                    return JSONResponse({"detail": [{"msg": "not signed in", "type": "unauthorized"}]}, status_code=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/signin?{urlencode({'next': target})}", status_code=303)
            except (DomainError, IllegalTransition) as exc:
                return error_page(request, exc)

        return page


router = APIRouter(route_class=PageRoute, include_in_schema=False)


# --- helpers --------------------------------------------------------------------------------
def page_user(request: Request, session: SessionDep) -> Principal:
    user = request.state.user = web_session.cookie_principal(request, session)  # error pages show the nav too
    return user


User = Annotated[Principal, Depends(page_user)]
# Ids are 32-bit INTEGER columns: a larger number names nothing (and PostgreSQL would refuse it).
RowId = Annotated[int, PathParam(ge=1, le=ID_MAX)]
CsrfField = Annotated[str, Form(alias=web_session.CSRF_FIELD)]  # default "": a missing token is a 403, like a wrong one


def render(request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    cookie = request.cookies.get(web_session.COOKIE_NAME, "")
    csrf = web_session.csrf_token(web_session.app_secret(request), cookie) if user and cookie else ""
    settings = request.app.state.settings
    return templates.TemplateResponse(
        request, name, {"user": user, "csrf": csrf, "api": settings.api_prefix, **context}, status_code=status_code
    )


def error_page(request: Request, exc: Exception) -> HTMLResponse:
    status, kind = 400, "error"
    for exc_type, code, name in STATUS:
        if isinstance(exc, exc_type):
            status, kind = code, name
            break
    message = "; ".join(i.msg for i in exc.issues) if isinstance(exc, InvalidInput) else str(exc)
    if isinstance(exc, NotFound):
        message = f"There is no {exc.kind} {exc.key} that you can see."
    # The nav needs the user; a failed lookup here only hides it.
    return render(request, "error.html", getattr(request.state, "user", None), status_code=status, status=status, kind=kind, message=message)


def back(to: str) -> RedirectResponse:
    # 303: the browser follows a POST's answer with a GET (no resubmit on reload).
    return RedirectResponse(to, status_code=303)


def safe_next(target: str | None) -> str:
    """Only paths on this site (an open redirect would let a link send a signed-in user anywhere)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/runs"
    return target


# --- static files ---------------------------------------------------------------------------
@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    """plotly.js from the installed ``plotly`` package: no CDN, works offline."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file():
        raise NotFound("file", name)
    return FileResponse(path, headers={"Cache-Control": "public, max-age=300"})


# --- sign-in --------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def home() -> RedirectResponse:
    return back("/runs")


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query's name
    return render(request, "signin.html", None, next=safe_next(next), error="")


@router.post("/signin", response_class=HTMLResponse)
def signin(request: Request, session: SessionDep, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/runs") -> Response:  # noqa: A002
    # No CSRF token here (there is no session yet): the Origin check stands in.
    web_session.check_same_origin(request)
    settings = request.app.state.settings
    try:
        principal = security.authenticate(session, token.strip(), touch_interval_s=settings.token_touch_interval_s)
    except Unauthorized as exc:
        return render(request, "signin.html", None, status_code=401, next=safe_next(next), error=f"That token does not work: {exc}.")
    max_age = web_session.max_age_s(settings)
    session_hash = security.start_web_session(session, principal, timedelta(seconds=max_age))
    session.commit()
    response = back(safe_next(next))
    value = web_session.make_cookie_value(web_session.app_secret(request), session_hash)
    response.set_cookie(web_session.COOKIE_NAME, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=web_session.is_https(request), path="/")
    return response


@router.post("/signout")
def signout(request: Request, user: User, session: SessionDep, csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    # The session's own token is deleted: a kept copy of the cookie no longer signs in.
    security.end_web_session(session, user)
    session.commit()
    response = back("/signin")
    response.delete_cookie(web_session.COOKIE_NAME, path="/", httponly=True, samesite="lax", secure=web_session.is_https(request))
    return response


# --- runs ----------------------------------------------------------------------------------
@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    user: User,
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=200)] = None,
    user_name: Annotated[str | None, Query(alias="user", max_length=100)] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> HTMLResponse:
    filters = {"status": status or None, "user": user_name or None, "group": group or None, "q": q or None}
    rows, next_cursor = list_runs(session, user, status=filters["status"], user=filters["user"], group=filters["group"],
                                         q=filters["q"], limit=PAGE_SIZE, cursor=cursor)
    active = {k: v for k, v in filters.items() if v}
    # The page's live poll asks the API for exactly these rows again: a cursor just above the first id.
    poll = {**active, "limit": PAGE_SIZE}
    if rows:
        poll["cursor"] = encode_cursor(rows[0].id + 1)
    return render(request, "runs.html", user, rows=rows, filters=filters, statuses=STATUSES,
                  next_url=f"/runs?{urlencode({**active, 'cursor': next_cursor})}" if next_cursor else None,
                  first_url=f"/runs?{urlencode(active)}" if cursor else None,
                  poll_url=f"{request.app.state.settings.api_prefix}/runs?{urlencode(poll)}")


# --- new run -------------------------------------------------------------------------------
HIDDEN_KNOBS = set(RESERVED_KNOBS)  # the seed and the output folder are not the spec's to set


def knob_fields() -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """The schema's knobs grouped as the trainer groups them, in its order."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, prop in TrainerConfig.json_schema()["properties"].items():
        if name not in HIDDEN_KNOBS:
            groups.setdefault(prop["x-group"], []).append((name, prop))
    return list(groups.items())


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def stack_defaults(stack: str) -> dict[str, str]:
    """Every knob's default under a STACK preset, as the form shows it: the schema's default, or its
    x-stack-defaults entry for a knob the presets set apart (STACK itself: the default stack)."""
    props = TrainerConfig.json_schema()["properties"]
    return {name: _shown(p.get("x-stack-defaults", {}).get(stack, p["default"])) for name, p in props.items()}


def _new_run_page(request: Request, user: Principal, values: dict[str, str], errors: dict[str, list[str]], status_code: int = 200,
                  stack: str = DEFAULT_STACK) -> HTMLResponse:
    settings = request.app.state.settings
    # The knobs show the chosen stack's defaults; caddie.js re-shows the untouched ones when STACK changes and
    # moves shown_stack with them, so the submit can tell a knob left alone from one set.
    stack = values.get("shown_stack", stack) if values.get("shown_stack") in STACKS else stack
    shown_defaults = stack_defaults(stack)
    per_stack = {name: {s: _shown(v) for s, v in p["x-stack-defaults"].items()}
                 for name, p in TrainerConfig.json_schema()["properties"].items() if "x-stack-defaults" in p}
    return render(request, "new_run.html", user, status_code=status_code, groups=knob_fields(), values=values, errors=errors,
                  shown=_shown, tracks=settings.track_choices, hardware=hardware_options(settings), stack=stack,
                  defaults={**shown_defaults, "STACK": stack}, help_defaults=shown_defaults, stack_defaults=per_stack,
                  teams=sorted(user.team_names.values()), settings=settings)


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_form(request: Request, user: User, stack: str = DEFAULT_STACK) -> HTMLResponse:
    return _new_run_page(request, user, {}, {}, stack=stack if stack in STACKS else DEFAULT_STACK)


def _spec_from_form(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The run spec a form describes. A knob equal to the default the form showed it at (the ``shown_stack``
    preset's) is left out, as the API drops defaults, so the chosen STACK's preset fills it; STACK itself
    is sent whenever it is not the default stack."""
    errors: dict[str, list[str]] = {}
    config: dict[str, Any] = {}
    shown = stack_defaults(form.get("shown_stack", DEFAULT_STACK))
    for _, knobs in knob_fields():
        for name, _prop in knobs:
            raw = form.get(f"config.{name}")
            if raw is None or raw.strip() == "":
                continue
            if name == "STACK" and raw.strip() == DEFAULT_STACK or name != "STACK" and raw.strip() == shown.get(name):
                continue
            config[name] = raw.strip()  # the trainer coerces and checks strings itself (as for env vars)
    body: dict[str, Any] = {"name": form.get("name", "").strip(), "notes": form.get("notes", ""), "track": form.get("track", ""),
                            "hardware": form.get("hardware", ""), "config": config,
                            "allow_noncompliant": form.get("allow_noncompliant") == "on"}
    if form.get("team"):
        body["team"] = form["team"]
    if form.get("priority", "").strip():
        try:
            body["priority"] = int(form["priority"])
        except ValueError:
            errors["priority"] = ["must be an integer"]
    seeds = [s.strip() for s in form.get("seeds", "").replace(" ", ",").split(",") if s.strip()]
    if seeds:
        try:
            body["seeds"] = [int(s) for s in seeds]
        except ValueError:
            errors["seeds"] = ["comma-separated integers, e.g. 1337, 42, 2025"]
    return body, errors


def _field_of(loc: tuple[Any, ...]) -> str:
    """``("config", "NUM_HEADS")`` -> ``config.NUM_HEADS``; ``("seeds", 0)`` -> ``seeds`` (the form's field names)."""
    parts = [str(p) for p in loc if p != "body"]
    if parts and parts[0] == "config" and len(parts) > 1:
        return f"config.{parts[1]}"
    return parts[0] if parts else "form"


@router.post("/runs/new", response_class=HTMLResponse)
async def submit_run(request: Request, user: User, session: SessionDep, settings: SettingsDep, background: BackgroundTasks) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    web_session.check_csrf(request, form.get(web_session.CSRF_FIELD))
    body, errors = _spec_from_form(form)
    if not errors:
        try:
            spec = RunCreate.model_validate(body)
            _, runs, _ = submit_runs(session, user, spec, settings)
        except ValidationError as exc:
            for err in exc.errors():
                errors.setdefault(_field_of(tuple(err["loc"])), []).append(err["msg"])
        except InvalidInput as exc:
            for issue in exc.issues:
                errors.setdefault(_field_of(issue.loc), []).append(issue.msg)
        else:
            if settings.on_submit_hook:
                background.add_task(call_on_submit_hook, settings.on_submit_hook, [r.id for r in runs])
            return back(f"/runs/{runs[0].id}" if len(runs) == 1 else f"/runs?group={runs[0].group_key}")
    return _new_run_page(request, user, form, errors, status_code=422)


def _log_tail(request: Request, session: SessionDep, user: Principal, run_id: int, log_bytes: int) -> tuple[str, int, bool]:
    start = max(0, log_bytes - LOG_TAIL_BYTES)
    # An ended run's log is in the artifact store (service.runs.logs), the one the app serves files from.
    try:
        piece = read_log(session, user, run_id, start, max_bytes=LOG_TAIL_BYTES * 2, store=request.app.state.artifact_store)
    except (Gone, Unavailable) as exc:  # the page still shows the run, its figures and curves; the log's place says why
        return f"({exc})", start, True
    text = piece.data
    if start > 0 and "\n" in text:  # begin at a whole line
        text = "…\n" + text.split("\n", 1)[1]
    return text, piece.next_offset, piece.done


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: RowId, user: User, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    run, forecast = get_run_and_forecast(session, user, run_id)  # the run and its stored estimate in one query
    estimate = queue.estimates_from(session, settings, [(run.id, run.status)], forecast).get(run.id)
    events = list_events(session, user, run_id)
    attempts = run_attempts(run.id, run.hardware, run.node_hardware, events, utcnow())  # from the events just read
    figures = charts.run_figures(metric_points(session, user, run_id))
    stored_end = run.log_truncated_at if run.log_truncated_at is not None else run.log_bytes or 0  # a capped log ends where storing stopped
    log_text, log_offset, log_done = _log_tail(request, session, user, run_id, stored_end)
    checks = queries.seed_row(run).checks
    artifacts = [(run_artifacts.artifact_name(a), a) for a in run_artifacts.list_artifacts(session, user, run_id)]
    return render(request, "run.html", user, run=run, events=events, attempts=attempts, figures=figures, log_text=log_text,
                  log_offset=log_offset, log_done=log_done, checks=checks, artifacts=artifacts,
                  terminal=is_terminal(run.status), quote=quote, estimate=estimate, runs_on=runs_on(run, settings))


@router.get("/web/runs/{run_id}/charts")
def run_charts(run_id: RowId, user: User, session: SessionDep) -> JSONResponse:
    """The run page's figures, downsampled (polled while the run is live)."""
    return JSONResponse(charts.run_figures(metric_points(session, user, run_id)))


@router.post("/runs/{run_id}/cancel")
def cancel(request: Request, run_id: RowId, user: User, session: SessionDep, csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    cancel_run(session, user, run_id)
    return back(f"/runs/{run_id}")


# --- compare -------------------------------------------------------------------------------
def _ids(text: str, picked: list[int]) -> list[int]:
    out = []
    for part in text.replace(" ", ",").split(","):
        if part.strip():
            try:
                out.append(int(part.strip().lstrip("#")))
            except ValueError:
                raise InvalidInput([Issue(("query", "runs"), "run ids, comma-separated", text)]) from None
    bad = [i for i in out + picked if not 1 <= i <= ID_MAX]
    if bad:
        raise InvalidInput([Issue(("query", "runs"), f"run ids are between 1 and {ID_MAX}", bad[0])])
    return out + picked


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    user: User,
    session: SessionDep,
    runs: Annotated[str, Query(max_length=500)] = "",
    groups: Annotated[str, Query(max_length=2000)] = "",
    pick: Annotated[list[int], Query(description="ticked runs (forms without JavaScript)")] = [],  # noqa: B006 - FastAPI copies it
    group: Annotated[list[str], Query(description="ticked groups")] = [],  # noqa: B006
) -> HTMLResponse:
    run_ids = list(dict.fromkeys(_ids(runs, pick)))
    keys = list(dict.fromkeys([k.strip() for k in groups.replace(" ", ",").split(",") if k.strip()] + group))
    runs, groups = ",".join(map(str, run_ids)), ",".join(keys)
    chosen = [get_run(session, user, i) for i in run_ids[:20]]
    views = [queries.group_view(session, user, k) for k in keys[:10]]
    curves: list[tuple[str, Any]] = [(f"#{r.id} {r.name} s{r.seed}", metric_points(session, user, r.id)) for r in chosen]
    for v in views:
        for r in v.runs:
            if user.can_see_team(r.team_id):  # a published group of another team shows figures, not curves
                curves.append((f"{v.group.name} s{r.seed}", metric_points(session, user, r.id)))
    columns = [(f"#{r.id} {r.name} (seed {r.seed})", r.spec) for r in chosen] + [(f"{v.group.name} [{v.group.key[:8]}]", shared_config(v.group.kind, v.group.config)) for v in views]
    # Significance compares groups: the chosen groups, and the groups of the chosen runs.
    keys = list(dict.fromkeys([v.group.key for v in views] + [r.group_key for r in chosen]))
    reports = [queries.group_report(session, user, k, keys[0]) for k in keys[1:]]
    base = queries.group_view(session, user, keys[0]) if keys else None
    return render(request, "compare.html", user, runs_text=runs, groups_text=groups, figures=charts.overlay_figures(curves) if curves else None,
                  diff=config_differences(columns), columns=[c for c, _ in columns], reports=reports, base=base)


def _every_knob(cfg: dict[str, Any]) -> dict[str, Any]:
    """A trainer config with its stack's defaults filled in (a knob a column leaves out means its own
    stack's default, not the default stack's); a script's spec as it is."""
    try:
        full = TrainerConfig.from_dict(cfg)
    except (ValueError, TypeError):  # ConfigError included: a script spec is no trainer config
        return cfg
    return {TrainerConfig.env_name(f): getattr(full, f.name) for f in TrainerConfig.knobs()}


def config_differences(columns: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any, list[Any]]]:
    """Knobs whose value differs between the columns: (knob, default, value per column)."""
    defaults = {name: prop["default"] for name, prop in TrainerConfig.json_schema()["properties"].items()}
    columns = [(label, _every_knob(cfg)) for label, cfg in columns]
    knobs = sorted({k for _, cfg in columns for k in cfg})
    out = []
    for knob in knobs:
        values = [cfg.get(knob, defaults.get(knob)) for _, cfg in columns]
        if len({json.dumps(v) for v in values}) > 1:
            out.append((knob, defaults.get(knob), values))
    return out


# --- groups and leaderboard -----------------------------------------------------------------
@router.get("/groups", response_class=HTMLResponse)
def groups_page(request: Request, user: User, session: SessionDep,
                track: Annotated[str | None, Query(max_length=32)] = None,
                hardware: Annotated[str | None, Query(max_length=32)] = None) -> HTMLResponse:
    views = queries.list_groups(session, user, track=track or None, hardware=hardware or None, limit=200)
    return render(request, "groups.html", user, views=views, track=track or "", hardware_filter=hardware or "")


@router.get("/groups/{key}", response_class=HTMLResponse)
def group_page(request: Request, key: str, user: User, session: SessionDep, baseline: Annotated[str | None, Query(max_length=300)] = None) -> HTMLResponse:
    report = queries.group_report(session, user, key, baseline or None)
    detail = GroupDetail.of_report(report)
    # a public record (record:<folder>) is nobody's to publish
    own = report.view.group.kind != "record" and user.can_see_team(report.view.group.team_id)
    return render(request, "group.html", user, g=detail, own=own)


@router.post("/groups/{key}/{action}")
def publish(request: Request, key: str, action: str, user: User, session: SessionDep, next: Annotated[str, Form()] = "", csrf: CsrfField = "") -> RedirectResponse:  # noqa: A002
    web_session.check_csrf(request, csrf)
    if action not in ("publish", "unpublish"):
        raise NotFound("action", action)
    group = queries.set_published(session, user, key, action == "publish")
    return back(safe_next(next or f"/groups/{group.key}"))


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(request: Request, user: User, session: SessionDep,
                     track: Annotated[str, Query(max_length=32)] = "10min_16mb",
                     hardware: Annotated[str | None, Query(max_length=32)] = None) -> HTMLResponse:
    settings = request.app.state.settings
    rows = queries.leaderboard(session, user, track=track, hardware=hardware or None, limit=200)
    entries = [(LeaderboardEntry.of(r), user.can_see_team(r.report.view.group.team_id)) for r in rows]
    return render(request, "leaderboard.html", user, entries=entries, track=track, hardware_filter=hardware or "",
                  tracks=settings.track_choices, hardware=hardware_options(settings))


# --- team usage ----------------------------------------------------------------------------
USAGE_QUEUE_SHOWN = 50
USAGE_DETAIL_MAX = 5  # past this many teams (a global admin's page), one line a team, each a link to its own page


@router.get("/usage", response_class=HTMLResponse)
def usage_page(request: Request, user: User, session: SessionDep, settings: SettingsDep,
               team: Annotated[str | None, Query(max_length=100, description="only this team")] = None) -> HTMLResponse:  # fmt: skip
    teams = usage.visible_teams(session, user)
    if team is not None:
        teams = [t for t in teams if t.name == team]
        if not teams:
            raise NotFound("team", team)
    views = usage.teams_usage(session, teams, settings.gpu_price_table, cold_provision_s=settings.cold_provision_s)
    team_ids = [t.id for t in teams]
    queued = team_view.runs_by_team(session, team_ids, [team_view.QUEUED])
    if len(teams) > USAGE_DETAIL_MAX:  # fifty teams' queues and charts on one page was 1.2 MB; the overview links to each
        return render(request, "usage.html", user, views=views, overview=charts.usage_overview_figure(views), queued=queued,
                      active=team_view.runs_by_team(session, team_ids, team_view.ACTIVE), queued_all=team_view.queued_by_hardware(session))  # fmt: skip
    figures = {v.team_id: charts.usage_figure([d.isoformat() for d in v.days], v.gpu_hours, v.budget_gpu_hours) for v in views}
    # Each team's first page of its queue, as GET /queue reads it (the stored forecast's rank index): a team
    # with thousands queued shows its next USAGE_QUEUE_SHOWN and how many more, not every row.
    queues = {t.id: team_view.team_queue(session, t, queue.list_queue(session, user, settings, t.name, limit=USAGE_QUEUE_SHOWN).items) for t in teams}
    return render(request, "usage.html", user, views=views, figures=figures, queues=queues, queued=queued, shown=USAGE_QUEUE_SHOWN,
                  queued_all=team_view.queued_by_hardware(session), overview=None, chosen=team)  # fmt: skip


# --- tokens --------------------------------------------------------------------------------
@router.get("/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, user: User, session: SessionDep) -> HTMLResponse:
    return _tokens(request, user, session)


@router.post("/tokens", response_class=HTMLResponse)
def create_token(request: Request, user: User, session: SessionDep, name: Annotated[str, Form()] = "", csrf: CsrfField = "") -> HTMLResponse:
    web_session.check_csrf(request, csrf)
    name = name.strip()
    if not 1 <= len(name) <= 100:
        return _tokens(request, user, session, status_code=422, error="a token needs a name of 1 to 100 characters")
    _, secret = accounts.create_token(session, user.name, name)
    session.commit()
    # Shown once, in this response only (as the API does); never stored in clear.
    return _tokens(request, user, session, created=secret)


def _tokens(request: Request, user: Principal, session: Session, *, status_code: int = 200, created: str | None = None, error: str = "") -> HTMLResponse:
    """The tokens page: the API tokens the user made, and apart from them their signed-in browsers."""
    return render(request, "tokens.html", user, status_code=status_code, tokens=accounts.list_tokens(session, user.user_id),
                  web_sessions=accounts.list_web_sessions(session, user.user_id), created=created, error=error)  # fmt: skip


@router.post("/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: RowId, user: User, session: SessionDep, csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    security.revoke_token(session, user, token_id)
    session.commit()
    return back("/tokens")


# --- teams: members and invitations (as `caddie team` and POST /teams/{name}/members) -----------
@router.get("/teams", response_class=HTMLResponse)
def teams_page(request: Request, user: User, session: SessionDep) -> HTMLResponse:
    teams = [(t, accounts.team_members(session, t.id), user.can_manage_team(t.id)) for t in accounts.list_teams(session, list(user.roles))]
    return render(request, "teams.html", user, teams=teams, invitations=accounts.invitations(session, user.user_id))


@router.post("/teams/{name}/invite")
def invite_member(request: Request, name: str, user: User, session: SessionDep, member: Annotated[str, Form(alias="user", max_length=100)] = "",
                  role: Annotated[str, Form(max_length=16)] = "member", csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    team = accounts.get_team(session, name)
    if not user.can_manage_team(team.id):
        raise NotFound("team", name)
    if user.is_admin:
        accounts.add_member(session, team, member.strip(), role)
    else:
        accounts.invite(session, team, member.strip(), role)
    session.commit()
    return back("/teams")


@router.post("/teams/{name}/webhook")
def set_webhook(request: Request, name: str, user: User, session: SessionDep, settings: SettingsDep,
                url: Annotated[str, Form(max_length=2000)] = "", csrf: CsrfField = "") -> RedirectResponse:
    """As PATCH /teams/{name} with webhook_url (team admins); an empty URL removes it."""
    web_session.check_csrf(request, csrf)
    team = accounts.get_team(session, name)
    if not user.can_manage_team(team.id):
        raise NotFound("team", name)
    accounts.set_webhook_url(session, team, url or None, allow_private=settings.webhook_allow_private)
    session.commit()
    return back("/teams")


@router.get("/teams/{name}/deliveries", response_class=HTMLResponse)
def deliveries_page(request: Request, name: str, user: User, session: SessionDep,
                    cursor: Annotated[str | None, Query(max_length=100)] = None) -> HTMLResponse:  # fmt: skip
    """The team's webhook notifications, a page at a time: event, host, HTTP status, tries, last error (the team's members)."""
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    rows, next_cursor = webhook_history.deliveries(session, team.id, limit=webhook_history.PAGE_ROWS, cursor=cursor)
    here = f"/teams/{quote(team.name)}/deliveries"
    return render(request, "deliveries.html", user, team=team, deliveries=rows, limit=webhook_history.PAGE_ROWS,
                  next_url=f"{here}?{urlencode({'cursor': next_cursor})}" if next_cursor else None, first_url=here if cursor else None)  # fmt: skip


@router.post("/teams/{name}/accept")
def accept_invitation(request: Request, name: str, user: User, session: SessionDep, csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    accounts.accept(session, user.user_id, name)
    session.commit()
    return back("/teams")


@router.post("/teams/{name}/decline")
def decline_invitation(request: Request, name: str, user: User, session: SessionDep, csrf: CsrfField = "") -> RedirectResponse:
    web_session.check_csrf(request, csrf)
    accounts.decline(session, user.user_id, name)
    session.commit()
    return back("/teams")


@router.post("/teams/{name}/remove")
def remove_member(request: Request, name: str, user: User, session: SessionDep, member: Annotated[str, Form(alias="user", max_length=100)] = "",
                  csrf: CsrfField = "") -> RedirectResponse:
    """As DELETE /teams/{name}/members/{user}: team admins remove members; a member may leave."""
    web_session.check_csrf(request, csrf)
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    member = member.strip()
    if not user.can_manage_team(team.id) and member != user.name:
        raise Forbidden(f"only admins of team {name!r} may remove other members")
    removed = accounts.remove_member(session, team, member)
    session.commit()
    if not removed:
        raise NotFound(f"member of team {name!r}", member)
    return back("/teams")
