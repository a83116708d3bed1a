"""Who may do what with a run: the matrix of callers against every run endpoint.

The run belongs to team-a. alice (member of team-a), aaron (admin of team-a)
and root (global admin) may see and cancel it; bob (team-b) is told it does not
exist (404, never 403); no token, a bad token and a revoked token get 401.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Run

RUNS = "/api/v1/runs"
CALLERS = {"alice": 200, "aaron": 200, "root": 200, "bob": 404, None: 401, "garbage": 401, "carol": 401}
ENDPOINTS = {
    "get": ("GET", ""),
    "cancel": ("POST", "/cancel"),
    "events": ("GET", "/events"),
    "metrics": ("GET", "/metrics"),
    "logs": ("GET", "/logs"),
}


@pytest.fixture
def run_id(client: TestClient, world, spec) -> int:
    r = client.post(RUNS, json=spec(), headers=world.h("alice"))
    assert r.status_code == 201
    return r.json()["runs"][0]["id"]


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("who", list(CALLERS), ids=[str(c) for c in CALLERS])
def test_run_endpoint(client: TestClient, world, run_id: int, session: Session, endpoint: str, who: str | None) -> None:
    method, suffix = ENDPOINTS[endpoint]
    r = client.request(method, f"{RUNS}/{run_id}{suffix}", headers=world.h(who))
    assert r.status_code == CALLERS[who], r.text
    if r.status_code == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"
    if r.status_code == 404:
        # Indistinguishable from a run that does not exist.
        missing = client.request(method, f"{RUNS}/999999{suffix}", headers=world.h(who))
        assert missing.status_code == 404 and missing.json()["detail"][0]["msg"].replace("999999", str(run_id)) == r.json()["detail"][0]["msg"]
    session.expire_all()
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    assert status == ("CANCELLED" if endpoint == "cancel" and r.status_code == 200 else "QUEUED")


@pytest.mark.parametrize("who", list(CALLERS), ids=[str(c) for c in CALLERS])
def test_list(client: TestClient, world, run_id: int, spec, who: str | None) -> None:
    bobs = client.post(RUNS, json=spec(name="bob's"), headers=world.h("bob")).json()["runs"][0]["id"]
    r = client.get(RUNS, headers=world.h(who))
    expected_status = 401 if CALLERS[who] == 401 else 200
    assert r.status_code == expected_status
    if expected_status != 200:
        return
    ids = {item["id"] for item in r.json()["items"]}
    expected = {"alice": {run_id}, "aaron": {run_id}, "bob": {bobs}, "root": {run_id, bobs}}[who]
    assert ids == expected
    # Filtering by another team's name shows nothing rather than an error.
    other = client.get(RUNS, params={"team": "team-a"}, headers=world.h(who)).json()["items"]
    assert {i["id"] for i in other} == ({run_id} if who != "bob" else set())


@pytest.mark.parametrize("who", [None, "garbage", "carol"], ids=str)
def test_submit_needs_a_valid_token(client: TestClient, world, spec, session: Session, who: str | None) -> None:
    assert client.post(RUNS, json=spec(), headers=world.h(who)).status_code == 401
    assert session.scalar(select(Run.id)) is None


def test_malformed_authorization_header(client: TestClient, world) -> None:
    for header in ("Basic abc", "Bearer", world.tokens["alice"]):
        assert client.get(RUNS, headers={"Authorization": header}).status_code == 401


def test_cancelling_another_members_run_needs_a_team_admin(client: TestClient, world, spec, session: Session) -> None:
    aarons = client.post(RUNS, json=spec(name="aaron's"), headers=world.h("aaron")).json()["runs"][0]["id"]
    r = client.post(f"{RUNS}/{aarons}/cancel", headers=world.h("alice"))
    assert r.status_code == 403 and "admin of its team" in r.json()["detail"][0]["msg"]
    session.expire_all()
    assert session.scalar(select(Run.status).where(Run.id == aarons)) == "QUEUED"
    alices = client.post(RUNS, json=spec(name="alice's"), headers=world.h("alice")).json()["runs"][0]["id"]
    assert client.post(f"{RUNS}/{alices}/cancel", headers=world.h("aaron")).status_code == 200  # the team admin may
