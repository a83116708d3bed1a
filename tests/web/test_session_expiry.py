"""Web sign-ins leave nothing behind (issue 17 item 6): each sign-in's session token expires after
CADDIE_WEB_SESSION_DAYS (the cookie's max-age too) and then signs in no more; sign-out deletes it;
expired and revoked session tokens are deleted at the user's next sign-in and by the janitor's
round, while API tokens (revoked or not) stay. Real app and database, both backends."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.models import ApiToken, utcnow
from service.core.settings import Settings
from service.http import session as web_session
from service.teams.tokens import prune_web_sessions
from tests.web.conftest import Browser
from tests.world import World


def _sessions(session: Session, user_id: int) -> list[ApiToken]:
    session.expire_all()
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.expires_at.is_not(None)).order_by(ApiToken.id)))


def _signed_in(settings: Settings, token: str) -> tuple[TestClient, str]:
    c = TestClient(create_app(settings))
    r = c.post("/signin", data={"token": token, "next": "/runs"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return c, r.headers["set-cookie"]


def test_a_sign_in_lasts_the_configured_days_on_the_cookie_and_on_its_token(world: World, settings: Settings, session: Session) -> None:
    short = settings.model_copy(update={"web_session_days": 2.0})
    with _signed_in(short, world.tokens["alice"])[0] as c:
        [row] = _sessions(session, world.user_ids["alice"])
        assert abs((row.expires_at - utcnow()) - timedelta(days=2)) < timedelta(minutes=1)
        r = c.post("/signin", data={"token": world.tokens["alice"]}, follow_redirects=False)
        assert f"Max-Age={2 * 24 * 3600}" in r.headers["set-cookie"]
        # Past its expiry the session signs in no more, though the cookie itself is younger.
        session.execute(update(ApiToken).where(ApiToken.user_id == world.user_ids["alice"], ApiToken.expires_at.is_not(None))
                        .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
        session.commit()
        r = c.get("/runs", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
        # The API token it was made from still works.
        assert c.get("/api/v1/runs", headers=world.h("alice")).status_code == 200
    # A cookie older than the setting is no session either, whatever its token says.
    key = web_session.secret_key(short)
    value = web_session.make_cookie_value(key, "0" * 64, now=0)
    assert web_session.token_hash_of(key, value, now=web_session.max_age_s(short) + 1, max_age=web_session.max_age_s(short)) is None


def test_sign_out_deletes_its_session_token_and_sign_in_prunes_the_dead_ones(world: World, settings: Settings, browser_for, session: Session) -> None:
    alice = world.user_ids["alice"]
    first, second = browser_for(world.tokens["alice"]), browser_for(world.tokens["alice"])
    assert len(_sessions(session, alice)) == 2
    assert first.post("/signout").status_code == 303
    assert len(_sessions(session, alice)) == 1  # deleted, not merely revoked
    assert second.c.get("/runs", follow_redirects=False).status_code == 200  # the other browser stays signed in
    # Dead sessions (expired; revoked with the token they came from) go at the next sign-in.
    session.execute(update(ApiToken).where(ApiToken.user_id == alice, ApiToken.expires_at.is_not(None))
                    .values(expires_at=utcnow() - timedelta(days=1)))  # fmt: skip
    session.commit()
    browser_for(world.tokens["alice"])
    assert len(_sessions(session, alice)) == 1  # only the new one
    assert second.c.get("/runs", follow_redirects=False).status_code == 303


def test_pruning_deletes_every_users_dead_sessions_and_never_an_api_token(world: World, settings: Settings, browser_for, session: Session) -> None:
    for who in ("alice", "aaron", "bob"):
        browser_for(world.tokens[who])
    api_tokens = session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.expires_at.is_(None)))
    now = utcnow()
    session.execute(update(ApiToken).where(ApiToken.user_id == world.user_ids["alice"], ApiToken.expires_at.is_not(None))
                    .values(expires_at=now - timedelta(hours=1)))  # fmt: skip
    session.execute(update(ApiToken).where(ApiToken.user_id == world.user_ids["aaron"], ApiToken.expires_at.is_not(None))
                    .values(revoked_at=now))  # fmt: skip
    session.commit()
    assert prune_web_sessions(session, now=now) == 2
    session.commit()
    assert [len(_sessions(session, world.user_ids[w])) for w in ("alice", "aaron", "bob")] == [0, 0, 1]
    # carol's API token is revoked (the world's), and stays listed as such.
    assert session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.expires_at.is_(None))) == api_tokens
    assert prune_web_sessions(session, now=now) == 0


def test_the_janitor_prunes_expired_sessions(world: World, settings: Settings, browser_for, session: Session) -> None:
    from worker.control.janitor import janitor_pass
    from worker.launchers.local import LocalLauncher

    b: Browser = browser_for(world.tokens["bob"])
    assert b.c.get("/runs", follow_redirects=False).status_code == 200
    session.execute(update(ApiToken).where(ApiToken.expires_at.is_not(None)).values(expires_at=utcnow() - timedelta(minutes=1)))
    session.commit()
    janitor_pass(session, launcher=LocalLauncher(settings), settings=settings, enqueue=lambda _: None)
    assert _sessions(session, world.user_ids["bob"]) == []
    assert b.c.get("/runs", follow_redirects=False).status_code == 303


def test_web_sign_ins_are_listed_apart_from_the_api_tokens_the_user_made(world: World, browser_for) -> None:
    """A sign-in's session token is no API token the user made: /tokens (API and page) lists only
    those; /tokens/sessions and the page's signed-in browsers list the live sign-ins, and ending
    one there signs that browser out as sign-out does."""
    first, second = browser_for(world.tokens["alice"]), browser_for(world.tokens["alice"])
    made = first.c.post("/api/v1/tokens", json={"name": "laptop"}, headers=world.h("alice")).json()
    listed = first.c.get("/api/v1/tokens", headers=world.h("alice")).json()
    assert [t["name"] for t in listed] == ["test", "laptop"] and made["id"] == listed[-1]["id"]
    sessions = first.c.get("/api/v1/tokens/sessions", headers=world.h("alice")).json()
    assert len(sessions) == 2 and {s["name"] for s in sessions} == {f"web session of #{listed[0]['id']}"}
    assert all(s["expires_at"] for s in sessions) and not set(s["id"] for s in sessions) & set(t["id"] for t in listed)
    page = first.c.get("/tokens").text
    api_part, browsers = page.split('id="web-sessions"')
    assert "laptop" in api_part and "web session of" not in api_part
    assert browsers.count("web session of #") == 2 and browsers.count("(this browser)") == 1
    # The other browser's session, ended from this one's page: that browser is signed out, this one is not.
    this = _this_browser(browsers)
    [other] = [s["id"] for s in sessions if s["id"] != this]
    assert first.post(f"/tokens/{other}/revoke", csrf_from="/tokens").status_code == 303
    assert second.c.get("/runs", follow_redirects=False).status_code == 303
    assert first.c.get("/runs", follow_redirects=False).status_code == 200
    assert [s["id"] for s in first.c.get("/api/v1/tokens/sessions", headers=world.h("alice")).json()] == [this]
    # Sign-out still ends its own session; the API tokens stay as they were.
    assert first.post("/signout").status_code == 303
    assert first.c.get("/api/v1/tokens/sessions", headers=world.h("alice")).json() == []
    assert [t["name"] for t in first.c.get("/api/v1/tokens", headers=world.h("alice")).json()] == ["test", "laptop"]


def _this_browser(page: str) -> int:
    """The id of the session row the page marks as this browser."""
    row = next(r for r in page.split("<tr>") if "(this browser)" in r)
    return int(re.search(r'action="/tokens/(\d+)/revoke"', row)[1])
