"""A cancel that races the run's last transition: the worker finishes the run
between the API reading it and recording the cancel request. The answer is 409
naming the status the run ended in, and no cancel request is left on it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.db import get_sessionmaker
from service.core.models import Run
from service.core.status import RunStatus
from service.runs import cancel as domain
from service.runs.lifecycle import transition

RUNS = "/api/v1/runs"


def _running_run(client: TestClient, world, spec, session: Session) -> int:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    run = session.get_one(Run, run_id)
    transition(session, run, RunStatus.PROVISIONING, actor="scheduler")
    transition(session, run, RunStatus.RUNNING, actor="worker")
    session.commit()
    return run_id


@pytest.mark.parametrize("final", [RunStatus.SUCCEEDED, RunStatus.FAILED])
def test_a_run_that_finishes_while_being_cancelled_answers_409(
    client: TestClient, world, spec, session: Session, db_url: str, monkeypatch: pytest.MonkeyPatch, final: RunStatus
) -> None:
    run_id = _running_run(client, world, spec, session)
    read_run = domain.get_run

    def read_then_the_worker_finishes(*args, **kwargs):  # noqa: ANN002, ANN003
        run = read_run(*args, **kwargs)  # the API sees RUNNING ...
        with get_sessionmaker(db_url)() as worker:  # ... and the worker, in its own transaction, finishes it
            transition(worker, worker.get_one(Run, run_id), final, actor="worker")
            worker.commit()
        return run

    monkeypatch.setattr(domain, "get_run", read_then_the_worker_finishes)
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    monkeypatch.undo()
    assert r.status_code == 409, r.text
    assert f"run {run_id} is already {final.value}" == r.json()["detail"][0]["msg"]
    session.expire_all()
    run = session.get_one(Run, run_id)
    assert run.status == final.value and run.cancel_requested_at is None


def test_a_cancel_request_is_still_recorded_while_the_run_runs(client: TestClient, world, spec, session: Session) -> None:
    run_id = _running_run(client, world, spec, session)
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    assert r.status_code == 200 and r.json()["status"] == "RUNNING" and r.json()["cancel_requested_at"]
