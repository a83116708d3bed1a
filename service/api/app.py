"""The FastAPI application: ``create_app()``; ``uvicorn --factory service.api.app:create_app``."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from sqlalchemy.orm import sessionmaker

from service.api.headers import SecurityHeaders
from service.api.routes import artifacts, export as export_routes, groups, meta, queue, runs, sweeps, teams, tokens, users
from service.core.db import get_sessionmaker
from service.core.settings import Settings, get_settings
from service.core.storage import make_artifact_store
from service.http.deps import refuse_nul
from service.http.errors import install_error_handlers
from service.http.limits import RequestLimits
from service.web import routes as web_routes, sweeps as web_sweeps
from service.webhooks import outbox  # noqa: F401 (a run's end queues the team's webhook: outbox listens on service.runs.lifecycle)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="caddie",
        description="Run Parameter Golf training runs on scarce 8xH100 nodes: submit specs, follow runs, compare seeds.",
        version="0.1.0",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    # One engine (and pool) per process, made here, never per request.
    app.state.sessionmaker = get_sessionmaker(settings.database_url, settings)
    # GET/HEAD requests get autocommit sessions: no BEGIN and no ROLLBACK round
    # trip per request (the ROLLBACK on close would also block the event loop).
    # Measured (bench/api_load): ~20 % less API CPU per authenticated list.
    app.state.read_sessionmaker = sessionmaker(app.state.sessionmaker.kw["bind"].execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
    # The store the worker writes to, built from the same settings; a bad
    # CADDIE_S3_* fails here, at start, not on the first download.
    app.state.artifact_store = make_artifact_store(settings)
    install_error_handlers(app)
    # Size and sign-in before a body is read (FastAPI parses bodies before dependencies).
    app.add_middleware(RequestLimits)
    # Outermost: CSP, nosniff, Referrer-Policy on every answer, the limits' 413/401 included.
    app.add_middleware(SecurityHeaders)
    checks = [Depends(refuse_nul)]
    for module in (runs, sweeps, queue, artifacts, groups, teams, users, tokens, meta):
        app.include_router(module.router, prefix=settings.api_prefix, dependencies=checks)
    app.include_router(export_routes.router, prefix=settings.api_prefix, dependencies=checks)
    app.include_router(meta.health_router)
    # The web pages (HTML at /runs, /leaderboard, ...; see service/web/routes.py).
    app.include_router(web_routes.router)
    app.include_router(web_sweeps.router)
    return app
