"""The web pages of a script run and its group: they say it is the team's own train_gpt.py
(by sha256), and a script group compares with a trainer group without an error."""

from __future__ import annotations

import base64
import hashlib

from fastapi.testclient import TestClient

from tests.world import World

SCRIPT = b"print('own')\n"


def test_script_run_group_and_compare_pages(world: World, browser_for, client: TestClient, spec) -> None:
    body = {"name": "own", "track": "10min_16mb", "hardware": "H100:8", "script": base64.b64encode(SCRIPT).decode(),
            "env": {"NUM_LAYERS": 11}, "data": "sp1024", "seeds": [1]}
    script = client.post("/api/v1/runs", json=body, headers=world.h("alice")).json()
    trainer = client.post("/api/v1/runs", json=spec(), headers=world.h("alice")).json()
    b = browser_for(world.tokens["alice"])
    sha = hashlib.sha256(SCRIPT).hexdigest()
    run_page = b.c.get(f"/runs/{script['runs'][0]['id']}")
    assert run_page.status_code == 200 and sha in run_page.text
    group_page = b.c.get(f"/groups/{script['group_key']}")
    assert group_page.status_code == 200 and f"own train_gpt.py {sha[:12]}" in group_page.text
    compare = b.c.get("/compare", params={"groups": f"{script['group_key']},{trainer['group_key']}"})
    assert compare.status_code == 200, compare.text
