"""The FastAPI application: ``create_app()``; ``uvicorn --factory service.api.app:create_app``."""

from __future__ import annotations

from fastapi import FastAPI

from service.api.errors import install_error_handlers
from service.api.routes import meta, runs, teams, tokens, users
from service.db import get_sessionmaker
from service.settings import Settings, get_settings


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
    install_error_handlers(app)
    for module in (runs, teams, users, tokens, meta):
        app.include_router(module.router, prefix=settings.api_prefix)
    app.include_router(meta.health_router)
    return app
