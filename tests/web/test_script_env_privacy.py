"""A published script group shows other teams its env names, and values only where its team
marked them public (issue 17 item 2): API bodies, the groups, group, leaderboard and compare pages."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.test_api_groups import finish_all
from tests.world import World

SECRET = "hf_s3cretvalue9"


def _publish_script_group(client: TestClient, world: World, session: Session) -> dict:
    body = {"name": "own", "track": "10min_16mb", "hardware": "H100:8", "script": base64.b64encode(b"print('own')\n").decode(),
            "env": {"HF_TOKEN": SECRET, "NUM_LAYERS": 11}, "public_env": ["NUM_LAYERS"], "data": "sp1024", "seeds": [1, 2]}
    r = client.post("/api/v1/runs", json=body, headers=world.h("alice"))
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["runs"][0]["spec"]["env"]["HF_TOKEN"] == SECRET  # the team's own run keeps its value (and runs with it)
    finish_all(session, sub, [1.88, 1.89])
    assert client.post(f"/api/v1/groups/{sub['group_key']}/publish", headers=world.h("alice")).status_code == 200
    return sub


def test_other_teams_see_env_names_and_only_public_values_through_the_api(client: TestClient, world: World, session: Session) -> None:
    key = _publish_script_group(client, world, session)["group_key"]
    for url in (f"/api/v1/groups/{key}", "/api/v1/groups", "/api/v1/leaderboard?track=10min_16mb"):
        r = client.get(url, headers=world.h("bob"))
        assert r.status_code == 200, r.text
        assert key[:8] in r.text and "HF_TOKEN" in r.text, url  # the name is shown ...
        assert SECRET not in r.text, url  # ... its value is not
    g = client.get(f"/api/v1/groups/{key}", headers=world.h("bob")).json()
    assert g["config"]["env"] == {"HF_TOKEN": "(private)", "NUM_LAYERS": "11"}
    assert "NUM_LAYERS=11" in g["diff"] and "HF_TOKEN=(private)" in g["diff"]


def test_a_public_env_name_must_be_one_of_the_specs(client: TestClient, world: World) -> None:
    body = {"name": "own", "track": "10min_16mb", "hardware": "H100:8", "script": base64.b64encode(b"x=1\n").decode(),
            "env": {"NUM_LAYERS": 11}, "public_env": ["HF_TOKEN"], "seeds": [1]}
    r = client.post("/api/v1/runs", json=body, headers=world.h("alice"))
    assert r.status_code == 422 and "public_env" in r.text and "HF_TOKEN" in r.text


def test_other_teams_pages_never_show_a_private_env_value(world: World, browser_for, client: TestClient, session: Session, spec) -> None:
    key = _publish_script_group(client, world, session)["group_key"]
    bobs = client.post("/api/v1/runs", json=spec(), headers=world.h("bob")).json()
    b = browser_for(world.tokens["bob"])
    for url, params in (("/groups", {}), (f"/groups/{key}", {}), ("/leaderboard", {}), ("/compare", {"groups": f"{key},{bobs['group_key']}"})):
        page = b.c.get(url, params=params)
        assert page.status_code == 200, (url, page.text[:300])
        assert SECRET not in page.text, url
        assert "HF_TOKEN" in page.text, url
