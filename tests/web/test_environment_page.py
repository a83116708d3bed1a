"""A script run's declared environment, over the API and on its page (issue 20 item 3): the spec
keeps the declaration (its requirements file among the run's files), and once the worker has read
the job's Python, the run's answer and its page show python, torch, CUDA, FlashAttention and every package."""

from __future__ import annotations

import base64
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.models import Run
from service.runs.scripts.environment import describe
from tests.wheels import make_wheel
from tests.world import World
from worker.launchers.envs import ensure_env

REQ = b"tinypkg==1.2.3\n"


def body(**environment: object) -> dict:
    return {"name": "own env", "track": "unlimited", "hardware": "cpu", "script": base64.b64encode(b"import tinypkg\n").decode(),
            "files": [{"name": "requirements.txt", "content": base64.b64encode(REQ).decode()}], "data": "sp1024", "seeds": [1],
            "environment": environment}


def test_the_declared_environment_and_what_it_held_are_shown(world: World, browser_for, client: TestClient, session: Session, tmp_path: Path) -> None:
    r = client.post("/api/v1/runs", json=body(requirements="requirements.txt", python="3.11", system_packages=["coreutils"]), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    run_id = r.json()["runs"][0]["id"]
    assert r.json()["runs"][0]["spec"]["environment"] == {"requirements": "requirements.txt", "python": "3.11", "system_packages": ["coreutils"]}
    page = browser_for(world.tokens["alice"]).c.get(f"/runs/{run_id}").text
    assert "Declared in its spec; recorded once its job has run." in page

    # what the worker records: the built environment's own report (a real build, from a local wheel)
    make_wheel(tmp_path / "wheels", "tinypkg", "1.2.3", {"tinypkg/__init__.py": ""})
    declared = describe(r.json()["runs"][0]["spec"]["environment"], {"requirements.txt": REQ})
    assert declared is not None
    built = ensure_env(tmp_path / "envs", declared, wheels=tmp_path / "wheels", offline=True)
    run = session.get(Run, run_id)
    run.environment = built.report
    session.commit()
    api = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
    assert api["environment"]["packages"]["tinypkg"] == "1.2.3" and api["environment"]["python"].startswith("3.11.")
    page = browser_for(world.tokens["alice"]).c.get(f"/runs/{run_id}").text
    section = page[page.index('id="environment"'):page.index('id="environment"') + 4000]
    assert f"<th>python</th><td>{built.report['python']}</td>" in section and "<th>torch</th><td>not installed</td>" in section
    assert f"its own, <code>{built.report['env_hash'][:20]}</code>" in section and "System packages: coreutils" in section
    assert "<tr><td>tinypkg</td><td><code>1.2.3</code></td></tr>" in section

    # node_packages: the environment over the node's own packages (this Python's torch), said so on the page
    r = client.post("/api/v1/runs", json=body(requirements="requirements.txt", node_packages=True), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    node_run = r.json()["runs"][0]
    over = describe(node_run["spec"]["environment"], {"requirements.txt": REQ})
    assert over is not None and over["node_packages"] is True
    run = session.get(Run, node_run["id"])
    run.environment = ensure_env(tmp_path / "envs", over, wheels=tmp_path / "wheels", offline=True).report
    session.commit()
    section = browser_for(world.tokens["alice"]).c.get(f"/runs/{node_run['id']}").text
    section = section[section.index('id="environment"'):]
    assert ", over the node's own packages" in section and f"<th>torch</th><td>{torch.__version__}</td>" in section


def test_a_bad_environment_is_a_422_naming_its_field(world: World, client: TestClient) -> None:
    r = client.post("/api/v1/runs", json=body(requirements="reqs.txt", find_links=["/srv/wheels"]), headers=world.h("alice"))
    assert r.status_code == 422
    locs = {tuple(d["loc"]): d["msg"] for d in r.json()["detail"]}
    assert "must name one of the run's files" in locs[("body", "environment", "requirements")]
    assert "http:// or https:// URL" in locs[("body", "environment", "find_links", 0)]
