"""Teams, users and tokens over the API, and the token rules: random, stored as
sha256 only, shown once, revocable, last use recorded at most once a minute."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.errors import AlreadyExists, InvalidInput, NotFound
from service.core.models import ApiToken, utcnow
from service.teams import accounts

API = "/api/v1"


def test_only_global_admins_create_teams_and_users(client: TestClient, world) -> None:
    for who, expected in [("alice", 403), ("aaron", 403), (None, 401), ("root", 201)]:
        assert client.post(f"{API}/teams", json={"name": "team-c"}, headers=world.h(who)).status_code == expected
        assert client.post(f"{API}/users", json={"name": "dave"}, headers=world.h(who)).status_code == expected
    r = client.post(f"{API}/teams", json={"name": "team-c"}, headers=world.h("root"))
    assert r.status_code == 409 and "already exists" in r.json()["detail"][0]["msg"]
    r = client.post(f"{API}/teams", json={"name": "bad name/../x"}, headers=world.h("root"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]


def test_team_admins_add_members_to_their_team_only(client: TestClient, world, session: Session) -> None:
    accounts.create_user(session, "dave")
    session.commit()
    url = f"{API}/teams/team-a/members"
    assert client.post(url, json={"user": "dave"}, headers=world.h("alice")).status_code == 403
    assert client.post(url, json={"user": "dave"}, headers=world.h("bob")).status_code == 404
    assert client.post(f"{API}/teams/team-b/members", json={"user": "dave"}, headers=world.h("aaron")).status_code == 404
    # A team admin invites; dave is no member until he accepts (issue 17 item 6).
    r = client.post(url, json={"user": "dave", "role": "member"}, headers=world.h("aaron"))
    assert r.status_code == 201 and "dave" not in {m["user"] for m in r.json()["members"]}
    # An unknown name gets the very same answer: no way to list user names.
    nobody = client.post(url, json={"user": "nobody"}, headers=world.h("aaron"))
    assert (nobody.status_code, nobody.json()) == (r.status_code, r.json())
    dave = {"Authorization": f"Bearer {accounts.create_token(session, 'dave', 'test')[1]}"}
    session.commit()
    assert client.get(f"{API}/runs", headers=dave).json()["items"] == [] and client.get(f"{API}/teams", headers=dave).json() == []
    assert client.get(f"{API}/users/me", headers=dave).json()["invitations"] == [{"team": "team-a", "role": "member"}]
    assert client.post(f"{API}/teams/team-b/accept", headers=dave).status_code == 404  # no invitation there
    r = client.post(f"{API}/teams/team-a/accept", headers=dave)
    assert r.status_code == 200 and {"user": "dave", "role": "member"} in r.json()["members"]
    assert client.get(f"{API}/users/me", headers=dave).json()["teams"] == [{"team": "team-a", "role": "member"}]
    assert client.post(url, json={"user": "dave", "role": "owner"}, headers=world.h("aaron")).status_code == 422
    # Global admins manage every team.
    r = client.post(f"{API}/teams/team-b/members", json={"user": "dave", "role": "admin"}, headers=world.h("root"))
    assert r.status_code == 201 and {"user": "dave", "role": "admin"} in r.json()["members"]


def test_the_last_admin_of_a_team_stays(client: TestClient, world) -> None:
    url = f"{API}/teams/team-a/members"
    r = client.post(url, json={"user": "aaron", "role": "member"}, headers=world.h("aaron"))
    assert r.status_code == 409 and "last admin" in r.json()["detail"][0]["msg"]
    assert client.post(url, json={"user": "aaron", "role": "member"}, headers=world.h("root")).status_code == 409
    # With a second admin, one may step down.
    assert client.post(url, json={"user": "alice", "role": "admin"}, headers=world.h("aaron")).status_code == 201
    r = client.post(url, json={"user": "aaron", "role": "member"}, headers=world.h("aaron"))
    assert r.status_code == 201 and {"user": "aaron", "role": "member"} in r.json()["members"]


def test_list_teams_and_me(client: TestClient, world) -> None:
    assert [t["name"] for t in client.get(f"{API}/teams", headers=world.h("alice")).json()] == ["team-a"]
    assert [t["name"] for t in client.get(f"{API}/teams", headers=world.h("root")).json()] == ["team-a", "team-b"]
    me = client.get(f"{API}/users/me", headers=world.h("aaron")).json()
    assert me["name"] == "aaron" and me["teams"] == [{"team": "team-a", "role": "admin"}] and me["is_admin"] is False


def test_token_is_shown_once_and_stored_hashed(client: TestClient, world, session: Session) -> None:
    r = client.post(f"{API}/tokens", json={"name": "laptop"}, headers=world.h("alice"))
    assert r.status_code == 201
    body = r.json()
    secret = body["token"]
    assert secret.startswith("cad_") and len(secret) >= 40 and body["prefix"] == secret[:12]
    row = session.get_one(ApiToken, body["id"])
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {str(v) for v in vars(row).values()}
    listed = client.get(f"{API}/tokens", headers={"Authorization": f"Bearer {secret}"}).json()
    assert body["id"] in [t["id"] for t in listed] and all("token" not in t for t in listed)
    assert client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {secret}"}).json()["name"] == "alice"


def test_tokens_for_others_need_a_global_admin(client: TestClient, world) -> None:
    assert client.post(f"{API}/tokens", json={"name": "x", "user": "bob"}, headers=world.h("alice")).status_code == 403
    r = client.post(f"{API}/tokens", json={"name": "x", "user": "bob"}, headers=world.h("root"))
    assert r.status_code == 201
    assert client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).json()["name"] == "bob"


def test_revoked_token_stops_working(client: TestClient, world) -> None:
    secret = client.post(f"{API}/tokens", json={"name": "ci"}, headers=world.h("alice")).json()
    h = {"Authorization": f"Bearer {secret['token']}"}
    assert client.get(f"{API}/runs", headers=h).status_code == 200
    # Someone else's token: not found. Your own: revoked.
    assert client.delete(f"{API}/tokens/{secret['id']}", headers=world.h("bob")).status_code == 404
    r = client.delete(f"{API}/tokens/{secret['id']}", headers=world.h("alice"))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert client.get(f"{API}/runs", headers=h).status_code == 401
    assert client.get(f"{API}/runs", headers=world.h("alice")).status_code == 200


def test_last_used_at_is_written_at_most_once_a_minute(client: TestClient, world, session: Session) -> None:
    token_id = session.scalar(select(ApiToken.id).where(ApiToken.user_id == world.user_ids["alice"]))
    assert session.get_one(ApiToken, token_id).last_used_at is None
    client.get(f"{API}/users/me", headers=world.h("alice"))
    session.expire_all()
    first = session.get_one(ApiToken, token_id).last_used_at
    assert first is not None
    client.get(f"{API}/users/me", headers=world.h("alice"))
    session.expire_all()
    assert session.get_one(ApiToken, token_id).last_used_at == first
    # Once the last write is over a minute old, the next use writes again.
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow() - timedelta(minutes=2)))
    session.commit()
    client.get(f"{API}/users/me", headers=world.h("alice"))
    session.expire_all()
    assert session.get_one(ApiToken, token_id).last_used_at > first


def test_account_functions_for_the_cli(session: Session) -> None:
    team = accounts.create_team(session, "solo", budget_gpu_hours=10.0, weight=2.0)
    user = accounts.create_user(session, "sam", email="sam@example.org", is_admin=True)
    accounts.add_member(session, "solo", "sam", "admin")
    row, secret = accounts.create_token(session, "sam", "bootstrap")
    session.commit()
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest() and user.is_admin and team.weight == 2.0
    assert accounts.team_members(session, team.id) == [("sam", "admin")]
    with pytest.raises(AlreadyExists):
        accounts.create_team(session, "solo")
    with pytest.raises(NotFound):
        accounts.add_member(session, "solo", "nobody")
    with pytest.raises(InvalidInput):
        accounts.add_member(session, "solo", "sam", "owner")
