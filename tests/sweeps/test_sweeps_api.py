"""Sweeps through the API on both databases: submit, the tick that starts and ends trials through the
ordinary submission path, stop and resume, other teams' 404, bad input, and a pruned trial."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.models import Metric, Run, SweepTrial, utcnow
from service.core.settings import Settings
from service.sweeps.predictor import Curve
from service.sweeps.store import _history, advance_sweeps
from tests.world import World

# A line final = 0.5 + 0.5·x with a ±0.005 wobble: the predictor's records for these tests.
RECORDS = [Curve(f"c{i}", f"g{i}", tuple((s, 1.2 + 0.02 * i) for s in range(100, 2001, 100)), 1.0,
                 0.5 + 0.5 * (1.2 + 0.02 * i) + (0.005 if i % 2 else -0.005)) for i in range(20)]  # fmt: skip


def sweep_body(**over: object) -> dict:
    body: dict = {"name": "layers", "track": "10min_16mb", "hardware": "H100:8", "base": {"MODEL_DIM": 512},
                  "space": {"NUM_LAYERS": {"values": [9, 10, 11]}}, "strategy": "grid", "seeds": [1, 2], "max_trials": 10, "max_parallel": 2}  # fmt: skip
    body.update(over)
    return body


def _tick(session: Session, settings: Settings) -> int:
    session.expire_all()
    return advance_sweeps(session, settings, records=RECORDS)


def _end(session: Session, run_ids: list[int], bpb: float, status: str = "SUCCEEDED") -> None:
    now = utcnow()
    session.execute(update(Run).where(Run.id.in_(run_ids)).values(status=status, val_bpb=bpb, val_loss=bpb / 0.6, started_at=now - timedelta(minutes=10),
                                                                  finished_at=now), execution_options={"synchronize_session": False})  # fmt: skip
    session.commit()


def test_sweep_lifecycle_stop_resume_and_other_teams(client: TestClient, world: World, session: Session, settings: Settings) -> None:
    r = client.post("/api/v1/sweeps", json=sweep_body(), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["status"] == "running" and sweep["trials"] == [] and sweep["spec"]["space"] == {"NUM_LAYERS": {"values": [9, 10, 11]}}
    sid = sweep["id"]

    assert _tick(session, settings) == 2  # max_parallel
    trials = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    assert [(t["number"], t["params"], t["status"]) for t in trials] == [(1, {"NUM_LAYERS": 9}, "running"), (2, {"NUM_LAYERS": 10}, "running")]
    runs = session.scalars(select(Run).where(Run.id.in_(trials[0]["run_ids"]))).all()
    assert sorted(r.seed for r in runs) == [1, 2] and {r.status for r in runs} == {"QUEUED"}  # one run per seed, in the ordinary queue
    assert {r.group_key for r in runs} == {trials[0]["group_key"]} and runs[0].spec == {"NUM_LAYERS": 9}
    assert _tick(session, settings) == 0  # twice is safe: no new trials while two are open

    for who in ("bob",):
        assert client.get(f"/api/v1/sweeps/{sid}", headers=world.h(who)).status_code == 404
        assert client.post(f"/api/v1/sweeps/{sid}/stop", headers=world.h(who)).status_code == 404
        assert client.get("/api/v1/sweeps", headers=world.h(who)).json()["items"] == []
    assert [s["id"] for s in client.get("/api/v1/sweeps", headers=world.h("aaron")).json()["items"]] == [sid]

    _end(session, trials[0]["run_ids"], 1.21)
    _end(session, trials[1]["run_ids"], 1.19)
    assert _tick(session, settings) == 1
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    assert [t["status"] for t in shown["trials"]] == ["complete", "complete", "running"]
    assert shown["best"]["number"] == 2 and abs(shown["best"]["value"] - 1.19) < 1e-9 and shown["gpu_hours_used"] > 0
    assert shown["importance"] is None  # from 3 valued trials on

    r = client.post(f"/api/v1/sweeps/{sid}/stop", headers=world.h("alice"))
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    third = r.json()["trials"][2]
    assert third["status"] == "stopped"
    assert {r.status for r in session.scalars(select(Run).where(Run.id.in_(third["run_ids"])))} == {"CANCELLED"}
    assert client.post(f"/api/v1/sweeps/{sid}/stop", headers=world.h("alice")).status_code == 409
    assert _tick(session, settings) == 0  # stopped: nothing starts

    assert client.post(f"/api/v1/sweeps/{sid}/resume", headers=world.h("bob")).status_code == 404
    r = client.post(f"/api/v1/sweeps/{sid}/resume", headers=world.h("alice"))
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert _tick(session, settings) == 0  # the grid's three points were all tried
    done = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    assert done["status"] == "done" and "every point" in done["status_reason"]


def test_bad_sweeps_are_refused_naming_the_field_and_limit(client: TestClient, world: World) -> None:
    def detail(**over: object) -> dict[str, str]:
        r = client.post("/api/v1/sweeps", json=sweep_body(**over), headers=world.h("alice"))
        assert r.status_code == 422, r.text
        return {".".join(map(str, d["loc"])): d["msg"] for d in r.json()["detail"]}

    assert "less than or equal to 64" in detail(max_parallel=65)["body.max_parallel"]
    assert "must be <= 64" in detail(space={"NUM_LAYERS": {"low": 2, "high": 99, "steps": 3}})["body.space.NUM_LAYERS.high"]
    assert "grid needs steps" in detail(space={"MATRIX_LR": {"low": 0.01, "high": 0.1}})["body.space.MATRIX_LR.steps"]
    assert "must divide MODEL_DIM" in detail(base={"NUM_HEADS": 7})["body.base.NUM_HEADS"]
    assert "must be one of" in detail(hardware="TPU:9")["body.hardware"]
    assert "strategy" in "".join(detail(strategy="annealing"))
    assert "'curve', 'median' or 'none'" in detail(pruner="hyperband")["body.pruner"]
    assert "median needs pruning on" in detail(pruner="median", prune=None)["body.pruner"]
    assert "less than or equal to 100" in detail(pruner="median", prune={"startup_trials": 101})["body.prune.startup_trials"]


def test_a_pruned_trial_has_its_runs_cancelled_and_says_why(client: TestClient, world: World, session: Session, settings: Settings) -> None:
    body = sweep_body(space={"NUM_LAYERS": {"values": [9, 10]}}, seeds=[1, 2],
                      prune={"margin": 0.0, "confidence": 0.9, "min_step": 500})  # fmt: skip
    sid = client.post("/api/v1/sweeps", json=body, headers=world.h("alice")).json()["id"]
    assert _tick(session, settings) == 2
    first, second = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    _end(session, first["run_ids"], 1.20)  # bpb/loss = 0.6
    # The second trial: one run running, one still queued; its train loss at 1000 says ~2.6 nats -> x = 1.56 -> predicted ~1.28.
    running, queued = second["run_ids"]
    session.execute(update(Run).where(Run.id == running).values(status="RUNNING", started_at=utcnow() - timedelta(minutes=3)))
    session.add_all([Metric(run_id=running, kind="train", step=s, train_loss=2.6, attempt=1) for s in range(100, 1001, 100)])
    session.commit()
    _tick(session, settings)
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    pruned = shown["trials"][1]
    assert pruned["status"] == "pruned", pruned
    assert pruned["prune"]["step"] == 1000 and pruned["prune"]["best_trial"] == 1 and pruned["prune"]["probability"] >= 0.9
    assert abs(pruned["prune"]["predicted_bpb"] - (0.5 + 0.5 * 2.6 * 0.6)) < 0.01
    assert "pruned at step 1000: predicted final val_bpb" in pruned["reason"] and pruned["saved_gpu_hours"] > 0
    assert shown["gpu_hours_saved"] == pruned["saved_gpu_hours"]
    session.expire_all()
    assert session.get_one(Run, queued).status == "CANCELLED"  # through the cancel path: at once while QUEUED
    assert session.get_one(Run, running).cancel_requested_at is not None  # the worker stops the job


def test_the_example_sweep_is_accepted(client: TestClient, world: World) -> None:
    body = yaml.safe_load(Path("examples/sweep.yaml").read_text(encoding="utf-8"))
    r = client.post("/api/v1/sweeps", json=body, headers=world.h("alice"))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["space"]["MATRIX_LR"] == {"low": 0.005, "high": 0.1, "log": True}


def test_the_best_trial_is_promoted_to_more_seeds_in_its_group(client: TestClient, world: World, session: Session, settings: Settings) -> None:
    body = sweep_body(space={"NUM_LAYERS": {"values": [9, 10]}}, seeds=[1], promote={"top": 1, "seeds": [2, 3]}, prune=None)
    assert client.post("/api/v1/sweeps", json={**body, "promote": {"seeds": [1, 4, 4]}}, headers=world.h("alice")).status_code == 422
    sid = client.post("/api/v1/sweeps", json=body, headers=world.h("alice")).json()["id"]
    assert _tick(session, settings) == 2
    first, second = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    _end(session, first["run_ids"], 1.22)
    _end(session, second["run_ids"], 1.20)
    _tick(session, settings)  # both end; the search is over: trial 2 gets seeds 2 and 3 in its group
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    promoted = shown["trials"][1]
    assert shown["status"] == "running" and promoted["status"] == "running" and len(promoted["run_ids"]) == 3
    runs = session.scalars(select(Run).where(Run.id.in_(promoted["run_ids"]))).all()
    assert sorted(r.seed for r in runs) == [1, 2, 3] and {r.group_key for r in runs} == {promoted["group_key"]}
    _end(session, promoted["run_ids"][1:], 1.21)
    _tick(session, settings)
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    assert shown["status"] == "done" and "promoted trial(s) #2 to 3 seeds" in shown["status_reason"], shown["status_reason"]
    assert abs(shown["trials"][1]["value"] - (1.20 + 1.21 + 1.21) / 3) < 1e-9


def test_the_sweep_list_pages_with_a_cursor(client: TestClient, world: World) -> None:
    made = [client.post("/api/v1/sweeps", json=sweep_body(name=f"s{i}"), headers=world.h("alice")).json()["id"] for i in range(5)]
    client.post("/api/v1/sweeps", json=sweep_body(name="other"), headers=world.h("bob"))  # another team's: never on alice's pages
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = client.get("/api/v1/sweeps", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=world.h("alice")).json()
        seen += [s["id"] for s in page["items"]]
        cursor, pages = page["next_cursor"], pages + 1
        if cursor is None:
            break
    assert seen == made[::-1] and pages == 3  # newest first, each once
    assert client.get("/api/v1/sweeps", params={"limit": 5}, headers=world.h("alice")).json()["next_cursor"] is None  # exactly one page
    for bad in ("garbage!", "cjEw", "czA", "s5"):  # not base64; a /runs cursor ("r10"); id 0; not encoded
        r = client.get("/api/v1/sweeps", params={"cursor": bad}, headers=world.h("alice"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"], (bad, r.text)


def test_pruner_choice_is_stored(client: TestClient, world: World) -> None:
    def spec(**over: object) -> dict:
        r = client.post("/api/v1/sweeps", json=sweep_body(**over), headers=world.h("alice"))
        assert r.status_code == 201, r.text
        return r.json()["spec"]

    assert spec()["prune"]["pruner"] == "curve"  # the default: caddie's own
    assert spec(pruner="none")["prune"] is None and spec(prune=None)["prune"] is None
    median = spec(pruner="median", prune={"min_step": 300, "startup_trials": 2})["prune"]
    assert (median["pruner"], median["min_step"], median["startup_trials"]) == ("median", 300, 2)


def test_the_median_pruner_stops_a_trial_behind_the_median(client: TestClient, world: World, session: Session, settings: Settings) -> None:
    body = sweep_body(space={"NUM_LAYERS": {"values": [9, 10, 11]}}, seeds=[1], max_parallel=3, pruner="median",
                      prune={"min_step": 500, "startup_trials": 2})  # fmt: skip
    sid = client.post("/api/v1/sweeps", json=body, headers=world.h("alice")).json()["id"]
    assert _tick(session, settings) == 3
    first, second, third = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    # Two complete trials whose loss falls 3.0 -> 2.0 (logged every 200 steps), then a third at 2.8 flat (logged every 100).
    for trial, bpb in ((first, 1.20), (second, 1.21)):
        session.add_all([Metric(run_id=trial["run_ids"][0], kind="train", step=s, train_loss=3.0 - s / 2000, attempt=1) for s in range(200, 2001, 200)])
        _end(session, trial["run_ids"], bpb)
    running = third["run_ids"][0]
    session.execute(update(Run).where(Run.id == running).values(status="RUNNING", started_at=utcnow() - timedelta(minutes=3)))
    session.add_all([Metric(run_id=running, kind="train", step=s, train_loss=2.8, attempt=1) for s in range(100, 401, 100)])
    session.commit()
    _tick(session, settings)
    assert client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"][2]["status"] == "running"  # before min_step
    session.add_all([Metric(run_id=running, kind="train", step=s, train_loss=2.8, attempt=1) for s in range(500, 701, 100)])
    session.commit()
    _tick(session, settings)
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    pruned = shown["trials"][2]
    assert pruned["status"] == "pruned" and pruned["value"] is None, pruned
    figures = pruned["prune"]
    assert (figures["pruner"], figures["step"], figures["compared"]) == ("median", 700, 2)
    assert abs(figures["median_loss"] - (3.0 - 700 / 2000)) < 1e-9 and figures["trial_loss"] == 2.8  # 700: between the logged 600 and 800
    assert "MedianPruner at step 700" in pruned["reason"] and pruned["saved_gpu_hours"] > 0
    session.expire_all()
    assert session.get_one(Run, running).cancel_requested_at is not None
    # TPE hears of it as Optuna's PRUNED with its last intermediate value, not as a failed trial.
    told = _history(session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sid)).all())
    assert (told[2].state, told[2].value, told[2].last) == ("pruned", None, (700, 2.8)) and told[0].last is None


def test_median_reads_curves_at_the_live_step() -> None:
    from service.sweeps.pruners import at_step, judge_median

    falling = [(s, 3.0 - s / 1000) for s in range(100, 2001, 100)]
    assert at_step([(100, 1.0), (300, 2.0)], 200) == 1.5 and at_step([(100, 1.0)], 50) is None and at_step([(100, 1.0)], 200) is None
    behind = [(s, 3.2 - s / 1000) for s in range(100, 801, 100)]
    assert judge_median(behind, [falling, falling], min_step=500, startup_trials=2) is not None
    assert judge_median(behind[:3], [falling, falling], min_step=500, startup_trials=2) is None  # step 300 < min_step
    assert judge_median(behind, [falling], min_step=500, startup_trials=2) is None  # one complete trial, two needed
    assert judge_median([(s, 2.5 - s / 1000) for s in range(100, 801, 100)], [falling, falling], min_step=500, startup_trials=2) is None  # ahead
    assert judge_median(behind, [falling[:3], falling[:3]], min_step=500, startup_trials=2) is None  # no complete curve spans step 800
