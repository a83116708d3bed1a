"""Keyset pagination: walking every page gives every matching run exactly once."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.models import Run
from service.core.status import RunStatus
from service.runs.lifecycle import transition

RUNS = "/api/v1/runs"
N = 90


@pytest.fixture
def many_runs(client: TestClient, world, spec, session: Session) -> list[dict]:
    """N runs over both teams and several users, names, groups and statuses."""
    rng = random.Random(7)
    made: list[dict] = []
    for i in range(N // 3):
        who = rng.choice(["alice", "aaron", "bob"])
        layers = rng.choice([9, 10, 11])
        name = f"run {i} {'alpha' if i % 4 == 0 else 'beta'}"
        body = client.post(RUNS, json=spec(name=name, notes=f"note {i % 5}", config={"NUM_LAYERS": layers}, seeds=[1, 2, 3]), headers=world.h(who)).json()
        made += body["runs"]
    for item in made:
        if rng.random() < 0.4:
            run = session.get_one(Run, item["id"])
            transition(session, run, RunStatus.PROVISIONING, actor="scheduler")
            if rng.random() < 0.5:
                transition(session, run, RunStatus.RUNNING, actor="worker")
            item["status"] = run.status
    session.commit()
    return made


def _walk(client: TestClient, headers: dict, params: dict, limit: int) -> list[int]:
    ids: list[int] = []
    cursor = None
    for _ in range(1000):
        r = client.get(RUNS, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
        assert len(page["items"]) == limit
    raise AssertionError("pagination did not end")


FILTERS = [
    ("all", {}, lambda r: True),
    ("status", {"status": "QUEUED"}, lambda r: r["status"] == "QUEUED"),
    ("two-statuses", {"status": "provisioning,running"}, lambda r: r["status"] in ("PROVISIONING", "RUNNING")),
    ("team", {"team": "team-b"}, lambda r: r["team"] == "team-b"),
    ("user", {"user": "aaron"}, lambda r: r["user"] == "aaron"),
    ("text", {"q": "ALPHA"}, lambda r: "alpha" in r["name"]),
    ("text-notes", {"q": "note 3"}, lambda r: r["notes"] == "note 3"),
    ("combined", {"team": "team-a", "status": "QUEUED", "q": "beta"}, lambda r: r["team"] == "team-a" and r["status"] == "QUEUED" and "beta" in r["name"]),
]


@pytest.mark.parametrize(("params", "keep"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_walk_all_pages_as_admin(client: TestClient, world, many_runs: list[dict], params: dict, keep) -> None:
    expected = sorted((r["id"] for r in many_runs if keep(r)), reverse=True)
    assert expected, "the fixture should give every filter something to find"
    for limit in ([1, 7, 200] if not params else [7, 200]):
        ids = _walk(client, world.h("root"), params, limit)
        assert ids == expected and len(set(ids)) == len(ids), limit


def test_group_filter(client: TestClient, world, many_runs: list[dict]) -> None:
    group = many_runs[0]["group_key"]
    ids = _walk(client, world.h("root"), {"group": group}, 4)
    assert ids == sorted((r["id"] for r in many_runs if r["group_key"] == group), reverse=True)


def test_member_walks_only_their_team(client: TestClient, world, many_runs: list[dict]) -> None:
    ids = _walk(client, world.h("bob"), {}, 11)
    assert ids == sorted((r["id"] for r in many_runs if r["team"] == "team-b"), reverse=True)


def test_new_runs_during_the_walk_do_not_shift_pages(client: TestClient, world, many_runs: list[dict], spec) -> None:
    h = world.h("root")
    first = client.get(RUNS, params={"limit": 10}, headers=h).json()
    client.post(RUNS, json=spec(seeds=[5, 6, 7]), headers=world.h("alice"))
    rest = _walk(client, h, {"cursor": first["next_cursor"]}, 10)
    ids = [i["id"] for i in first["items"]] + rest
    assert ids == sorted((r["id"] for r in many_runs), reverse=True)


def test_text_search_treats_wildcards_literally(client: TestClient, world, spec) -> None:
    h = world.h("alice")
    client.post(RUNS, json=spec(name="100% done"), headers=h)
    client.post(RUNS, json=spec(name="1000 done"), headers=h)
    client.post(RUNS, json=spec(name="a_b"), headers=h)
    client.post(RUNS, json=spec(name="axb"), headers=h)
    assert [i["name"] for i in client.get(RUNS, params={"q": "0%"}, headers=h).json()["items"]] == ["100% done"]
    assert [i["name"] for i in client.get(RUNS, params={"q": "a_b"}, headers=h).json()["items"]] == ["a_b"]
