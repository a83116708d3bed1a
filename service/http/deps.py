"""Typed dependencies shared by every route: settings, a DB session, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.core.bodies import ID_MAX
from service.core.errors import Forbidden, InvalidInput, Issue
from service.core.settings import Settings
from service.core.storage import ArtifactStore
from service.http import session as web_session
from service.http.limits import PRINCIPAL
from service.teams.tokens import Principal, authenticate

bearer = HTTPBearer(auto_error=False, description="API token (cad_...) from `caddie admin create-token` or POST /api/v1/tokens")


# Dependencies that do no I/O are async: FastAPI runs a sync one in the thread pool, a hop
# per request each (about a tenth of a millisecond of CPU on the hot reads, bench/api_load).
async def get_app_settings(request: Request) -> Settings:
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


async def get_current_user(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    # A request with a body was signed in by RequestLimits before the body was read: the same
    # token, not looked up twice (a query and a thread-pool hop on every submit).
    known = request.scope.get("state", {}).get(PRINCIPAL)
    if known is not None:
        return known
    return await run_in_threadpool(_authenticate, request, session, settings, credentials)


def _authenticate(request: Request, session: Session, settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Principal:
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


# --- bounds on what a URL may carry ---------------------------------------------------
# Ids are INTEGER columns (32-bit in PostgreSQL) and log offsets BIGINT: a bigger
# number names nothing, and the database refuses to compare with it (a 500 before these bounds).
OFFSET_MAX = 2**63 - 1
Id = Annotated[int, Path(ge=1, le=ID_MAX, description=f"a positive integer, at most {ID_MAX}")]
ByteOffset = Annotated[int, Query(ge=0, le=OFFSET_MAX, description="byte offset into the log")]


async def refuse_nul(request: Request) -> None:
    """A NUL character in a path or query parameter: 422 naming it. PostgreSQL cannot
    hold NUL in text, so such a value would otherwise fail inside the first query."""
    issues = [Issue((where, name), "must not contain NUL (\\x00) characters", value)
              for where, params in (("path", request.path_params.items()), ("query", request.query_params.multi_items()))
              for name, value in params if isinstance(value, str) and "\x00" in value]
    if issues:
        raise InvalidInput(issues)
