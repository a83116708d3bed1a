"""The cancel's answer says what happened (issue 21 item 6): cancelled at once, requested
(the worker stops the job), or the run finished first; waiting a little lets the answer
say how an active run ended. On PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.db import get_sessionmaker
from service.core.models import Run
from service.core.status import RunStatus
from service.runs.lifecycle import transition

RUNS = "/api/v1/runs"


def _run(client: TestClient, world, spec, session: Session, *, running: bool) -> int:  # noqa: ANN001
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    if running:
        run = session.get_one(Run, run_id)
        transition(session, run, RunStatus.PROVISIONING, actor="scheduler")
        transition(session, run, RunStatus.RUNNING, actor="worker")
        session.commit()
    return run_id


def test_a_queued_run_is_cancelled_at_once(client: TestClient, world, spec, session: Session) -> None:  # noqa: ANN001
    run_id = _run(client, world, spec, session, running=False)
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["cancel_outcome"], body["cancel_note"]) == ("CANCELLED", "cancelled", f"run {run_id} is cancelled")
    assert body["id"] == run_id and "val_bpb" in body  # still the whole run: existing clients read what they read


def test_a_running_run_without_a_worker_says_the_cancel_is_requested(client: TestClient, world, spec, session: Session) -> None:  # noqa: ANN001
    run_id = _run(client, world, spec, session, running=True)
    started = time.monotonic()
    body = client.post(f"{RUNS}/{run_id}/cancel?wait_s=0.3", headers=world.h("alice")).json()
    assert time.monotonic() - started >= 0.3
    assert (body["status"], body["cancel_outcome"]) == ("RUNNING", "requested") and body["cancel_requested_at"]
    assert "the worker stops the job" in body["cancel_note"]


@pytest.mark.parametrize(("final", "outcome"), [(RunStatus.SUCCEEDED, "finished_first"), (RunStatus.CANCELLED, "cancelled")])
def test_waiting_says_how_an_active_run_ended(client: TestClient, world, spec, session: Session, db_url: str, final: RunStatus, outcome: str) -> None:  # noqa: ANN001
    run_id = _run(client, world, spec, session, running=True)

    def worker() -> None:  # the executor sees the request (or had written its result) and ends the run
        time.sleep(0.3)
        with get_sessionmaker(db_url)() as own:
            transition(own, own.get_one(Run, run_id), final, actor="worker")
            own.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        body = client.post(f"{RUNS}/{run_id}/cancel?wait_s=5", headers=world.h("alice")).json()
    finally:
        thread.join()
    assert (body["status"], body["cancel_outcome"]) == (final.value, outcome)
    if final is RunStatus.SUCCEEDED:
        assert body["cancel_note"] == f"run {run_id} ended SUCCEEDED before the cancel took effect; what it stored is kept"


def test_a_finished_run_still_answers_409(client: TestClient, world, spec, session: Session) -> None:  # noqa: ANN001
    run_id = _run(client, world, spec, session, running=False)
    client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    assert r.status_code == 409 and r.json()["detail"][0]["msg"] == f"run {run_id} is already CANCELLED"
    assert client.post(f"{RUNS}/{run_id}/cancel?wait_s=11", headers=world.h("alice")).status_code == 422
