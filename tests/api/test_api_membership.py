"""Membership ends by consent or by a team admin (issue 17 item 6): an invited user declines; a
team admin (or a global admin) removes a member, a member may leave, the last admin stays, and a
removal answers alike for a user who is no member and one who does not exist. Real app and
database, both backends.

team-a: alice (member), aaron (admin), carol (member, token revoked); team-b: bob; root: global admin.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.teams import accounts

API = "/api/v1"


def _members(client: TestClient, world, who: str, team: str = "team-a") -> dict[str, str]:
    found = [t for t in client.get(f"{API}/teams", headers=world.h(who)).json() if t["name"] == team]
    return {m["user"]: m["role"] for m in found[0]["members"]} if found else {}


def _token(session: Session, name: str) -> dict[str, str]:
    secret = accounts.create_token(session, name, "test")[1]
    session.commit()
    return {"Authorization": f"Bearer {secret}"}


def test_an_invited_user_declines_and_joins_nothing(client: TestClient, world, session: Session) -> None:
    accounts.create_user(session, "dave")
    session.commit()
    dave = _token(session, "dave")
    assert client.post(f"{API}/teams/team-a/members", json={"user": "dave"}, headers=world.h("aaron")).status_code == 201
    assert client.post(f"{API}/teams/team-b/decline", headers=dave).status_code == 404  # no invitation there
    r = client.post(f"{API}/teams/team-a/decline", headers=dave)
    assert r.status_code == 204, r.text
    me = client.get(f"{API}/users/me", headers=dave).json()
    assert me["invitations"] == [] and me["teams"] == []
    assert client.post(f"{API}/teams/team-a/accept", headers=dave).status_code == 404  # nothing left to accept
    r = client.post(f"{API}/teams/team-a/decline", headers=dave)
    assert r.status_code == 404 and "invitation" in r.json()["detail"][0]["msg"]
    # A member has no invitation to decline: declining never takes a membership away.
    assert client.post(f"{API}/teams/team-a/decline", headers=world.h("alice")).status_code == 404
    assert "alice" in _members(client, world, "aaron")
    # The team may invite again.
    assert client.post(f"{API}/teams/team-a/members", json={"user": "dave"}, headers=world.h("aaron")).status_code == 201
    assert client.get(f"{API}/users/me", headers=dave).json()["invitations"] == [{"team": "team-a", "role": "member"}]


def test_a_team_admin_removes_a_member_who_then_sees_nothing_of_the_team(client: TestClient, world) -> None:
    url = f"{API}/teams/team-a/members"
    assert client.delete(f"{url}/aaron", headers=world.h("alice")).status_code == 403  # a member removes no one else
    assert client.delete(f"{API}/teams/team-a/members/alice", headers=world.h("bob")).status_code == 404  # not bob's team
    assert client.delete(f"{API}/teams/team-b/members/bob", headers=world.h("aaron")).status_code == 404
    r = client.delete(f"{url}/alice", headers=world.h("aaron"))
    assert r.status_code == 204, r.text
    assert "alice" not in _members(client, world, "aaron")
    assert client.get(f"{API}/teams", headers=world.h("alice")).json() == []
    assert client.get(f"{API}/users/me", headers=world.h("alice")).json()["teams"] == []
    # Gone is gone; a stranger's name and a name nobody has answer alike.
    gone, nobody = client.delete(f"{url}/alice", headers=world.h("aaron")), client.delete(f"{url}/nobody", headers=world.h("aaron"))
    assert gone.status_code == nobody.status_code == 404
    assert "member of team" in gone.json()["detail"][0]["msg"] and "member of team" in nobody.json()["detail"][0]["msg"]
    assert client.delete(f"{url}/{'x' * 101}", headers=world.h("aaron")).status_code == 422
    # A global admin removes from any team.
    assert client.delete(f"{API}/teams/team-b/members/bob", headers=world.h("root")).status_code == 204
    assert client.get(f"{API}/teams", headers=world.h("bob")).json() == []


def test_removing_a_name_that_is_only_invited_withdraws_the_invitation_and_answers_as_for_no_one(client: TestClient, world, session: Session) -> None:
    accounts.create_user(session, "dave")
    session.commit()
    dave = _token(session, "dave")
    assert client.post(f"{API}/teams/team-a/members", json={"user": "dave"}, headers=world.h("aaron")).status_code == 201
    invited, nobody = (client.delete(f"{API}/teams/team-a/members/{n}", headers=world.h("aaron")) for n in ("dave", "nobody"))
    assert (invited.status_code, invited.json()["detail"][0]["msg"].replace("dave", "X")) == (
        nobody.status_code, nobody.json()["detail"][0]["msg"].replace("nobody", "X"))
    assert client.get(f"{API}/users/me", headers=dave).json()["invitations"] == []


def test_the_last_admin_is_never_removed_and_a_member_may_leave(client: TestClient, world) -> None:
    url = f"{API}/teams/team-a/members"
    for who in ("aaron", "root"):
        r = client.delete(f"{url}/aaron", headers=world.h(who))
        assert r.status_code == 409 and "last admin" in r.json()["detail"][0]["msg"], r.text
    assert _members(client, world, "aaron")["aaron"] == "admin"
    # A member leaves on their own.
    assert client.delete(f"{url}/alice", headers=world.h("alice")).status_code == 204
    assert client.get(f"{API}/teams", headers=world.h("alice")).json() == []
    # With a second admin, the first may leave.
    assert client.post(url, json={"user": "bob", "role": "admin"}, headers=world.h("root")).status_code == 201
    assert client.delete(f"{url}/aaron", headers=world.h("aaron")).status_code == 204
    assert _members(client, world, "bob") == {"bob": "admin", "carol": "member"}
    assert client.delete(f"{url}/bob", headers=world.h("bob")).status_code == 409  # now bob is the last
