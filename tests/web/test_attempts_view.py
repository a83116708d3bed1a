"""Each attempt of a run, shown and billed (issue 21 item 7): GET /runs/{id} lists them (attempt_history)
and the run page has a table of them, both made from the run's events as the executor writes them and
billed as the billing bills them (its own GPU-seconds per attempt, summing to the run's bill)."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.billing.accounting import billed_gpu_seconds, load_runs
from service.core.models import Run, RunEvent, utcnow
from service.core.status import RunStatus
from service.runs.lifecycle import transition
from tests.world import World

NODE = "; node: 8x NVIDIA H100 80GB HBM3 (H100:8)"


def test_a_run_relaunched_after_a_lost_node_shows_and_bills_each_attempt(world: World, browser_for, client: TestClient, session: Session, spec) -> None:
    r = client.post("/api/v1/runs", json=spec(hardware="H100:8"), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    run_id = r.json()["runs"][0]["id"]
    assert client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()["attempt_history"] == []  # never launched

    # What the executor writes: a spot node preempted under attempt 1, attempt 2 on a fresh node to the end.
    run = session.get_one(Run, run_id)
    steps = [
        (RunStatus.PROVISIONING, "dispatched to a worker"),
        (RunStatus.RUNNING, f"job 3 on caddie-h100x8-t1-{run_id}; deadline 1500 s{NODE}"),
        (RunStatus.QUEUED, "node lost: the job's driver died: the node was preempted or failed"),
        (RunStatus.PROVISIONING, "dispatched to a worker"),
        (RunStatus.RUNNING, f"job 3 on caddie-h100x8-t1-{run_id}-r2; deadline 1500 s{NODE}"),
        (RunStatus.SUCCEEDED, ""),
    ]
    for to, reason in steps:
        transition(session, run, to, actor="worker", reason=reason, also={"node_hardware": {"gpu_name": "NVIDIA H100 80GB HBM3", "gpus": 8}} if to == RunStatus.RUNNING else None)
    session.commit()
    # a minute provisioning, 9 minutes trained then lost; 2 minutes provisioning, 12 minutes to the end
    t0 = utcnow() - timedelta(hours=1)
    at = [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=10), t0 + timedelta(minutes=10), t0 + timedelta(minutes=12), t0 + timedelta(minutes=24)]
    ids = [e.id for e in session.query(RunEvent).filter(RunEvent.run_id == run_id, RunEvent.from_status.isnot(None)).order_by(RunEvent.id)]
    for event_id, when in zip(ids, at, strict=True):
        session.execute(update(RunEvent).where(RunEvent.id == event_id).values(at=when))
    session.commit()

    got = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
    history = got["attempt_history"]
    assert [(a["attempt"], a["launch_key"], a["cluster"], a["ended"]) for a in history] == [
        (1, f"run-{run_id}-attempt-1", f"caddie-h100x8-t1-{run_id}", "node_lost"),
        (2, f"run-{run_id}-attempt-2", f"caddie-h100x8-t1-{run_id}-r2", "succeeded"),
    ]
    assert history[0]["node"] == "8x NVIDIA H100 80GB HBM3 (H100:8)" and history[0]["reason"].startswith("node lost: the job's driver died")
    assert [a["billed_gpu_seconds"] for a in history] == [8 * 600.0, 8 * 840.0]  # GPUs x (PROVISIONING .. release)
    assert history[0]["running_at"] is not None and history[1]["ended_at"] is not None and got["attempts"] == 1
    # the same seconds the billing counts for the run
    [record] = [rec for rec in load_runs(session, [run.team_id], t0 - timedelta(days=1)) if rec.run_id == run_id]
    assert sum(a["billed_gpu_seconds"] for a in history) == billed_gpu_seconds(record, t0 - timedelta(days=1), utcnow())

    page = browser_for(world.tokens["alice"]).c.get(f"/runs/{run_id}").text
    table = page[page.index('id="attempts"'):page.index("</table>", page.index('id="attempts"'))]
    assert f"<code>run-{run_id}-attempt-1</code>" in table and f"caddie-h100x8-t1-{run_id}-r2" in table
    assert "node lost" in table and "succeeded" in table and ">1.333<" in table and ">1.867<" in table  # billed GPU-hours: 4800 s, 6720 s
    # another team sees neither
    assert client.get(f"/api/v1/runs/{run_id}", headers=world.h("bob")).status_code == 404


def test_an_attempt_still_going_is_billed_to_now(world: World, client: TestClient, session: Session, spec) -> None:
    run_id = client.post("/api/v1/runs", json=spec(hardware="H100:8"), headers=world.h("alice")).json()["runs"][0]["id"]
    run = session.get_one(Run, run_id)
    transition(session, run, RunStatus.PROVISIONING, actor="scheduler", reason="dispatched to a worker")
    session.commit()
    [a] = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()["attempt_history"]
    assert (a["attempt"], a["cluster"], a["running_at"], a["ended_at"], a["ended"], a["reason"]) == (1, None, None, None, None, "")
    assert a["billed_gpu_seconds"] >= 0
