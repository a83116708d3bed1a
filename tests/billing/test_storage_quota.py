"""A team's storage quota (issue 17 item 5f): artifacts + stored logs + script files; a
submission past it is a 403 naming the quota; another team is unaffected."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.billing.quotas import team_storage
from service.billing.storage import counted
from service.core.models import Artifact
from service.core.settings import Settings
from service.runs.logs import append_log
from service.runs.schemas import RunCreate
from service.runs.submit import submit_runs
from service.teams.tokens import Principal
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



def test_two_submissions_at_once_cannot_both_take_the_last_room(db_url: str, tmp_path: Path, world: World, session: Session) -> None:
    """The check holds the team's total locked to its submission's commit: a second submission
    of the team waits, then counts the first one's script and is refused."""
    settings = Settings(home=tmp_path / "home", database_url=db_url, team_storage_quota_bytes=15_000)

    def body(name: str, script: bytes) -> dict:
        return {"name": name, "track": "unlimited", "hardware": "cpu", "seeds": [1], "script": base64.b64encode(script).decode(), "data": "sp1024"}

    checked, release = threading.Event(), threading.Event()

    def hold(_session: Session) -> None:  # the first submission, checked and written, waits to commit
        checked.set()
        assert release.wait(timeout=60)

    event.listen(session, "before_commit", hold)
    team_id = world.team_ids["team-a"]
    principal = Principal(world.user_ids["alice"], "alice", False, roles={team_id: "member"}, team_names={team_id: "team-a"})
    first = threading.Thread(target=submit_runs, args=(session, principal, RunCreate.model_validate(body("first", b"x" * 9_000)), settings))
    first.start()
    answers: list[int] = []
    try:
        assert checked.wait(timeout=60)
        with TestClient(create_app(settings)) as client:
            second = threading.Thread(target=lambda: answers.append(client.post(RUNS, json=body("second", b"y" * 9_000), headers=world.h("alice")).status_code))
            second.start()
            second.join(timeout=2)
            assert not answers  # waiting for the first submission's commit
            release.set()
            second.join(timeout=60)
    finally:
        release.set()
        first.join(timeout=60)
        event.remove(session, "before_commit", hold)
    assert answers == [403]
    assert team_storage(session, team_id).total == 9_000 <= settings.team_storage_quota_bytes


def test_a_submission_that_adds_no_bytes_does_not_wait_for_one_that_does(db_url: str, tmp_path: Path, world: World, session: Session, spec) -> None:  # noqa: ANN001
    """Only a submission that brings bytes (a script) holds the team's quota to its commit: a
    trainer run takes no room, so a team's trainer submits do not queue behind each other."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: every submission waits for the one before it")
    settings = Settings(home=tmp_path / "home", database_url=db_url, team_storage_quota_bytes=15_000)
    checked, release = threading.Event(), threading.Event()

    def hold(_session: Session) -> None:  # a script submission, checked and written, waits to commit
        checked.set()
        assert release.wait(timeout=60)

    event.listen(session, "before_commit", hold)
    team_id = world.team_ids["team-a"]
    principal = Principal(world.user_ids["alice"], "alice", False, roles={team_id: "member"}, team_names={team_id: "team-a"})
    script = {"name": "held", "track": "unlimited", "hardware": "cpu", "seeds": [1], "script": base64.b64encode(b"x" * 9_000).decode(), "data": "sp1024"}
    first = threading.Thread(target=submit_runs, args=(session, principal, RunCreate.model_validate(script), settings))
    first.start()
    answers: list[int] = []
    try:
        assert checked.wait(timeout=60)
        with TestClient(create_app(settings)) as client:
            second = threading.Thread(target=lambda: answers.append(client.post(RUNS, json=spec(name="trainer"), headers=world.h("alice")).status_code))
            second.start()
            second.join(timeout=30)
            assert answers == [201]  # answered while the script submission still holds the team
    finally:
        release.set()
        first.join(timeout=60)
        event.remove(session, "before_commit", hold)
