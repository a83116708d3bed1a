"""Web sign-in: a session cookie made from an API token, and CSRF tokens for forms.

The cookie holds ``<sha256 of the token>.<issued unix time>.<HMAC>``, signed with
the deployment's secret key (``CADDIE_SECRET_KEY``, else a random key kept in
``$CADDIE_HOME/secret_key``). It carries the token's *hash*, which is what the
database stores, never the token itself: a stolen database is not enough to
forge a cookie (that needs the key too), and a stolen cookie is not an API
token. Each request looks the hash up again (``security.authenticate_hash``),
so revoking the token ends every session made from it.

CSRF: each form carries ``csrf_token(key, cookie)`` (an HMAC of the cookie
value) in a hidden field; ``check_csrf`` compares it in constant time. The
token changes with every sign-in and cannot be computed without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy.orm import Session

from service.core.errors import Forbidden, Unauthorized
from service.core.settings import Settings
from service.teams.tokens import Principal, authenticate_hash

COOKIE_NAME = "caddie_session"
MAX_AGE_S = 14 * 24 * 3600  # CADDIE_WEB_SESSION_DAYS' default; a deployment's own is max_age_s(settings)
CSRF_FIELD = "csrf_token"
KEY_FILE = "secret_key"


def secret_key(settings: Settings) -> bytes:
    """CADDIE_SECRET_KEY, else the key in $CADDIE_HOME/secret_key (made on first use, mode 0600)."""
    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    path = Path(settings.home) / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: two API processes starting together agree on one key (the loser reads it).
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    for _ in range(50):  # the winner may not have written yet
        key = path.read_text().strip()
        if key:
            return key.encode("utf-8")
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it or set CADDIE_SECRET_KEY")


def app_secret(request: Request) -> bytes:
    """The key, read once per app."""
    key = getattr(request.app.state, "web_secret", None)
    if key is None:
        key = request.app.state.web_secret = secret_key(request.app.state.settings)
    return key


def _sign(key: bytes, purpose: str, payload: str) -> str:
    mac = hmac.new(key, f"{purpose}:{payload}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def make_cookie_value(key: bytes, token_hash: str, now: float | None = None) -> str:
    payload = f"{token_hash}.{int(time.time() if now is None else now)}"
    return f"{payload}.{_sign(key, 'session', payload)}"


def max_age_s(settings: Settings) -> int:
    """A sign-in's lifetime (CADDIE_WEB_SESSION_DAYS): the cookie's, and its session token's."""
    return int(settings.web_session_days * 24 * 3600)


def token_hash_of(key: bytes, value: str | None, now: float | None = None, max_age: int = MAX_AGE_S) -> str | None:
    """The token hash a cookie value carries, or None when it is missing, forged or older than ``max_age`` seconds."""
    if not value or value.count(".") != 2:
        return None
    token_hash, issued, mac = value.split(".")
    if not hmac.compare_digest(mac, _sign(key, "session", f"{token_hash}.{issued}")):
        return None
    try:
        age = (time.time() if now is None else now) - int(issued)
    except ValueError:
        return None
    return token_hash if 0 <= age <= max_age else None


def csrf_token(key: bytes, cookie_value: str) -> str:
    return _sign(key, "csrf", cookie_value)


def check_csrf(request: Request, submitted: str | None) -> None:
    """403 unless the form's token matches the caller's session cookie."""
    cookie = request.cookies.get(COOKIE_NAME, "")
    if not cookie or not submitted or not hmac.compare_digest(submitted, csrf_token(app_secret(request), cookie)):
        raise Forbidden("the form's CSRF token is missing or does not match your session; reload the page and try again")


def check_same_origin(request: Request) -> None:
    """403 when the browser says the form came from another site (the Origin header).

    For the sign-in form, which has no session and so no CSRF token yet: without
    this a foreign page could sign a visitor in as someone else ("login CSRF").
    Clients that send no Origin (curl, old browsers) are let through.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc != host:
        raise Forbidden(f"a form from {origin} may not sign in here")


def cookie_principal(request: Request, session: Session) -> Principal:
    """The signed-in user of a request with a session cookie; Unauthorized when there is none or it is stale."""
    settings: Settings = request.app.state.settings
    token_hash = token_hash_of(app_secret(request), request.cookies.get(COOKIE_NAME), max_age=max_age_s(settings))
    if token_hash is None:
        raise Unauthorized("not signed in")
    return authenticate_hash(session, token_hash, touch_interval_s=settings.token_touch_interval_s)


def is_https(request: Request) -> bool:
    # Behind a TLS-terminating proxy uvicorn sets the scheme from X-Forwarded-Proto
    # when started with --proxy-headers (its default for trusted local proxies).
    return request.url.scheme == "https"
