"""A script run's page and its API answer show what it touched (issue 20 item 5): the
validation shard it read during training and the address it connected to during evaluation,
each with its time, beside the failing checks that name them."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.models import Run
from service.results.queries import judge_run
from tests.worker.run.test_audit_hook import (
    launcher as launcher,  # noqa: F401  (the fixture: a local launcher over a tiny data root)
    run_script,
)
from tests.world import World
from worker.launchers.local import LocalLauncher


def test_the_run_page_and_api_show_the_touches_and_the_failing_checks(world: World, browser_for, client: TestClient, session: Session,
                                                                       launcher: LocalLauncher) -> None:
    touches, _ = run_script(launcher, PEEK="1", NET="1")  # a real sandboxed run of a script that peeks and phones home
    body = {"name": "own", "track": "unlimited", "hardware": "cpu", "script": base64.b64encode(b"print(1)\n").decode(),
            "data": "sp1024", "seeds": [1]}
    run_id = client.post("/api/v1/runs", json=body, headers=world.h("alice")).json()["runs"][0]["id"]
    run = session.get(Run, run_id)
    run.status, run.val_bpb, run.val_loss = "SUCCEEDED", 1.2, 2.0
    run.result = {"status": "succeeded", "source": "script log", "touches": touches}
    judge_run(run)
    session.commit()

    api = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
    checks = {c["rule"]: c for c in api["checks"]}
    assert checks["no_val_in_train"]["verdict"] == "fail" and "fineweb_val_000000.bin during training" in checks["no_val_in_train"]["reason"]
    assert checks["no_network_in_eval"]["verdict"] == "fail" and "192.0.2.7:443" in checks["no_network_in_eval"]["reason"]
    assert [o["phase"] for o in api["touches"]["val_opens"]] == ["setup", "train", "eval"]
    assert api["touches"]["connections"][0]["address"] == "192.0.2.7:443"

    page = browser_for(world.tokens["alice"]).c.get(f"/runs/{run_id}").text
    section = page[page.index('id="touches"'):]
    assert "data/datasets/fineweb10B_sp1024/fineweb_val_000000.bin</code></td><td>train</td><td>t+" in section
    assert "192.0.2.7:443</code></td><td>eval</td><td>t+" in section
    assert "no_network_in_eval</b>" in page and "during evaluation at " in page
