"""The teams page ends memberships as the API does (issue 17 item 6): an invited user declines; a
team admin removes a member; a member leaves; the last admin stays; every form needs its CSRF
token. Real app and database, both backends.

team-a: alice (member), aaron (admin), carol (member); team-b: bob.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.teams import accounts
from tests.world import World


def _remove(browser, team: str, user: str):  # noqa: ANN001, ANN202 - a Browser and its response
    return browser.post(f"/teams/{team}/remove", {"user": user}, csrf_from="/teams")


def test_an_invited_user_declines_on_the_teams_page(world: World, browser_for, session: Session) -> None:
    accounts.create_user(session, "dora")
    _, dora_token = accounts.create_token(session, "dora", "t")
    session.commit()
    aaron = browser_for(world.tokens["aaron"])
    assert aaron.post("/teams/team-a/invite", {"user": "dora"}, csrf_from="/teams").status_code == 303
    dora = browser_for(dora_token)
    page = dora.c.get("/teams").text
    assert 'action="/teams/team-a/decline"' in page and ">Decline</button>" in page
    assert dora.c.post("/teams/team-a/decline", follow_redirects=False).status_code == 403  # no CSRF token
    assert dora.post("/teams/team-a/decline", csrf_from="/teams").status_code == 303
    page = dora.c.get("/teams").text
    assert "invited you" not in page and "You are in no team yet" in page
    assert dora.post("/teams/team-a/decline", csrf_from="/teams").status_code == 404  # nothing left
    assert "dora" not in aaron.c.get("/teams").text


def test_a_team_admin_removes_members_a_member_leaves_and_the_last_admin_stays(world: World, browser_for) -> None:
    aaron, alice, bob = (browser_for(world.tokens[n]) for n in ("aaron", "alice", "bob"))
    page = aaron.c.get("/teams").text
    assert page.count('class="inline member-remove"') == 3  # aaron (Leave), alice and carol (Remove)
    mine = alice.c.get("/teams").text
    assert mine.count('class="inline member-remove"') == 1 and ">Leave</button>" in mine and ">Remove</button>" not in mine
    assert aaron.c.post("/teams/team-a/remove", data={"user": "carol"}, follow_redirects=False).status_code == 403  # no CSRF token
    assert _remove(alice, "team-a", "carol").status_code == 403  # a member removes no one else
    assert _remove(bob, "team-a", "carol").status_code == 404  # not bob's team
    assert _remove(aaron, "team-a", "carol").status_code == 303
    assert "carol" not in aaron.c.get("/teams").text
    assert _remove(aaron, "team-a", "carol").status_code == 404  # gone already
    last = _remove(aaron, "team-a", "aaron")
    assert last.status_code == 409 and "last admin" in last.text
    assert _remove(alice, "team-a", "alice").status_code == 303  # leaving
    assert "You are in no team yet" in alice.c.get("/teams").text
    assert "alice" not in aaron.c.get("/teams").text
