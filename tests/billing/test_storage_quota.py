"""A team's storage quota (issue 17 item 5f): artifacts + stored logs + script files; a
submission past it is a 403 naming the quota; another team is unaffected."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.billing.quotas import team_storage
from service.billing.storage import counted
from service.core.models import Artifact
from service.core.settings import Settings
from service.runs.logs import append_log
from tests.world import World

RUNS = "/api/v1/runs"
SCRIPT = b"print('val_bpb:1.0')\n" * 10


def test_a_team_over_its_quota_cannot_submit(db_url: str, tmp_path: Path, world: World, session: Session, spec) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path / "home", database_url=db_url, team_storage_quota_bytes=10_000)
    with TestClient(create_app(settings)) as client:
        script_spec = {"name": "own", "track": "unlimited", "hardware": "cpu", "seeds": [1],
                       "script": base64.b64encode(SCRIPT).decode(), "data": "sp1024"}  # fmt: skip
        r = client.post(RUNS, json=script_spec, headers=world.h("alice"))
        assert r.status_code == 201, r.text
        run_id = r.json()["runs"][0]["id"]
        # Through the writers (they keep the team's running total, service.billing.storage).
        append_log(session, run_id, "", log_end=50_000, log_truncated_at=3_000)  # a capped log counts what is stored
        with counted(session, run_id):
            session.add(Artifact(run_id=run_id, kind="model", uri="file:///x", bytes=7_000))
        session.commit()
        use = team_storage(session, world.team_ids["team-a"])
        assert (use.artifacts, use.logs, use.scripts) == (7_000, 3_000, len(SCRIPT))
        r = client.post(RUNS, json=spec(name="more"), headers=world.h("alice"))
        assert r.status_code == 403
        msg = r.json()["detail"][0]["msg"]
        assert "CADDIE_TEAM_STORAGE_QUOTA_BYTES" in msg and "10,000 bytes" in msg and f"uses {10_000 + len(SCRIPT):,}" in msg
        assert client.post(RUNS, json=spec(name="theirs"), headers=world.h("bob")).status_code == 201  # team B has room
