"""Limits before work: the caller is known and the body's size allowed before a byte of it is read.

FastAPI reads and parses a route's body before it runs the route's dependencies, so a size
check or a token check in a dependency comes after the body is in memory (a 1 GB body cost an
API worker 3 GB before its 401). This ASGI middleware sits in front of the app and, for every
request that may carry a body (anything but GET, HEAD and OPTIONS):

1. answers 413 when Content-Length is over the route's limit, reading nothing;
2. answers 401 (API) or sends the browser to /signin (web) when the caller is not signed in:
   a bearer token on the API, the session cookie on the web pages (/signin aside);
3. counts the bytes as the app reads them (chunked bodies have no Content-Length) and answers
   413 as soon as they pass the limit; the app is told the client went away.

uvicorn reads a request's body from the socket only as the app asks for it, so a refused body
is never buffered. The routes still check what they parse (their own finer limits).
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import Unauthorized
from service.core.settings import Settings
from service.http import session as web_session
from service.http.errors import RETRY_AFTER_S, database_unavailable
from service.teams.tokens import authenticate, authenticate_hash

NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Where a caller signs in: no session or token exists yet.
SIGN_IN_PATHS = frozenset({"/signin"})
# The scope["state"] key under which the API caller found here waits for the route (service.http.deps.get_current_user).
PRINCIPAL = "caddie_principal"


class BodyTooLarge(Exception):
    pass


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The most bytes a request's body may have: a run submission carries script files, everything else is small."""
    if method == "POST" and path.rstrip("/") == f"{settings.api_prefix}/runs":
        return settings.max_request_bytes
    return settings.max_body_bytes


def _authenticated(app: Any, scope: Scope, path: str, headers: dict[bytes, bytes]) -> bool:
    """Whether the request carries a live credential (runs in a thread: one indexed query). An API
    caller is kept in the request's state: the route takes it from there instead of asking again."""
    settings: Settings = app.state.settings
    # The autocommit maker: one lookup needs no BEGIN and ROLLBACK around it (two round trips on every
    # POST), and the guarded last_used_at UPDATE commits by itself.
    with app.state.read_sessionmaker() as session:
        try:
            if path.startswith(settings.api_prefix + "/"):
                scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
                principal = authenticate(session, token.strip() if scheme.lower() == "bearer" else None, touch_interval_s=settings.token_touch_interval_s)
                scope.setdefault("state", {})[PRINCIPAL] = principal
            else:
                cookie = _cookie(headers.get(b"cookie", b"").decode("latin-1"), web_session.COOKIE_NAME)
                key = getattr(app.state, "web_secret", None) or web_session.secret_key(settings)
                app.state.web_secret = key
                token_hash = web_session.token_hash_of(key, cookie, max_age=web_session.max_age_s(settings))
                if token_hash is None:
                    return False
                authenticate_hash(session, token_hash, touch_interval_s=settings.token_touch_interval_s)
        except Unauthorized:
            return False
    return True


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _send_json(send: Send, status: int, msg: str, kind: str, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"detail": [{"msg": msg, "type": kind}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: size and sign-in checked before a body is read (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in NO_BODY_METHODS:
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        settings: Settings = app.state.settings
        path: str = scope["path"]
        limit = body_limit(settings, scope["method"], path)
        headers = dict(scope["headers"])
        too_large = f"request body over {limit} bytes, the limit for {scope['method']} {path}"
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _send_json(send, 413, too_large, "body_too_large")
            return
        try:
            known = path in SIGN_IN_PATHS or await anyio.to_thread.run_sync(_authenticated, app, scope, path, headers)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # The database is down (issue 21): the same 503 + Retry-After as every route gives.
            await _send_json(send, 503, "the database is unavailable; retry the request", "unavailable", ((b"retry-after", RETRY_AFTER_S.encode()),))
            return
        if not known:
            if path.startswith(settings.api_prefix + "/"):
                await _send_json(send, 401, "missing, invalid or revoked bearer token", "unauthorized", ((b"www-authenticate", b"Bearer"),))
            else:
                await send({"type": "http.response.start", "status": 303, "headers": [(b"location", b"/signin"), (b"content-length", b"0"), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": b""})
            return

        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _send_json(send, 413, too_large, "body_too_large")
                    # The app sees a client that went away, and stops reading.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
