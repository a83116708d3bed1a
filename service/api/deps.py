"""Typed dependencies shared by every route: settings, a DB session, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.errors import Forbidden
from service.security import Principal, authenticate
from service.settings import Settings
from service.web import session as web_session

bearer = HTTPBearer(auto_error=False, description="API token (cad_...) from `caddie admin create-token` or POST /api/v1/tokens")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Async so it needs no threadpool hop: making a Session does no I/O (the
    # connection is taken on first use, inside the sync route's thread).
    # Reads autocommit (see create_app); writes run in one transaction.
    maker = request.app.state.read_sessionmaker if request.method in ("GET", "HEAD") else request.app.state.sessionmaker
    session = maker()
    try:
        yield session
    finally:
        session.close()


def get_artifact_store(request: Request) -> ArtifactStore:
    return request.app.state.artifact_store


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]


def get_current_user(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    token = credentials.credentials if credentials is not None else None
    if token is None and request.method in ("GET", "HEAD") and web_session.COOKIE_NAME in request.cookies:
        # The web pages poll the API with their session cookie. Reads only: a
        # browser attaches cookies to requests other sites make it send, so a
        # cookie must never be enough to change state. The pages change state
        # through their own forms, which check a CSRF token (service/web).
        return web_session.cookie_principal(request, session)
    return authenticate(session, token, touch_interval_s=settings.token_touch_interval_s)


CurrentUser = Annotated[Principal, Depends(get_current_user)]


def get_admin(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise Forbidden("only global admins may do this")
    return user


AdminUser = Annotated[Principal, Depends(get_admin)]
