"""Sweeps through the API on both databases: submit, the tick that starts and ends trials through the
ordinary submission path, stop and resume, other teams' 404, bad input, and a pruned trial."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
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
    # The seed stack (9 layers of it): under the default 2026-04-27 stack 9 or 10 layers break XSA_LAST_N=11.
    body: dict = {"name": "layers", "track": "10min_16mb", "hardware": "H100:8", "base": {"STACK": "2026-03-23", "MODEL_DIM": 512},
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
    assert {r.group_key for r in runs} == {trials[0]["group_key"]} and runs[0].spec == {"NUM_LAYERS": 9, "STACK": "2026-03-23"}
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
    promote = detail(budget_gpu_hours=1.0, promote={"reserve_gpu_hours": 2.0, "baseline": "abcdef99", "max_seeds": 20, "min_seeds": 30})
    assert "at most 16 (CADDIE_MAX_SEEDS)" in promote["body.promote.max_seeds"] and "at most max_seeds" in promote["body.promote.min_seeds"]
    assert "below budget_gpu_hours" in promote["body.promote.reserve_gpu_hours"] and "not a group of yours" in promote["body.promote.baseline"]
    assert "above the trials' own 2 seeds" in detail(promote={"max_seeds": 2})["body.promote.max_seeds"]
    assert "must be unique" in detail(promote={"seeds": [1, 4, 4]})["body.promote.seeds"]


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


def test_the_example_sweep_is_accepted_and_its_pruner_acts_at_its_own_steps(client: TestClient, world: World, session: Session,
                                                                             settings: Settings) -> None:  # fmt: skip
    """examples/sweep.yaml as `caddie sweep submit` sends it: accepted, scored on the whole validation split, and its pruner
    judges a trial at the steps its runs log, before they end (bench/sweeps_real.py runs the same sweep for real)."""
    from bench.sweeps_real import BASE
    from cli.sweeps import read_sweep_file

    body = read_sweep_file(Path("examples/sweep.yaml"))
    assert body["base"] == BASE  # the example is the measured sweep (bench/results/sweeps.md)
    r = client.post("/api/v1/sweeps", json=body, headers=world.h("alice"))
    assert r.status_code == 201, r.text
    sid, spec = r.json()["id"], r.json()["spec"]
    assert not spec["base"].get("VAL_TOKENS_LIMIT")  # the full split: the full_val rule can pass, and every trial scores the same set
    prune, iterations, every = spec["prune"], spec["base"]["ITERATIONS"], spec["base"]["TRAIN_LOG_EVERY"]
    assert prune["pruner"] == "median" and every <= prune["min_step"] < iterations, prune
    logged = range(every, iterations + 1, every)

    def trials() -> list[dict]:
        return client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]

    # The median pruner's startup trials run whole: a loss falling from 6 at the example's own logged steps.
    for _ in range(prune["startup_trials"]):
        _tick(session, settings)
        live = [t for t in trials() if t["status"] == "running"]
        assert len(live) == 1, live  # max_parallel 1
        session.add_all([Metric(run_id=live[0]["run_ids"][0], kind="train", step=s, train_loss=6.0 - s / 100, attempt=1) for s in logged])
        _end(session, live[0]["run_ids"], 2.5)
    _tick(session, settings)
    [live] = [t for t in trials() if t["status"] == "running"]
    run_id = live["run_ids"][0]
    session.execute(update(Run).where(Run.id == run_id).values(status="RUNNING", started_at=utcnow() - timedelta(seconds=20)))
    session.add_all([Metric(run_id=run_id, kind="train", step=s, train_loss=6.0, attempt=1) for s in logged if s <= prune["min_step"]])
    session.commit()
    _tick(session, settings)
    pruned = next(t for t in trials() if t["number"] == live["number"])
    assert pruned["status"] == "pruned" and pruned["prune"]["step"] == prune["min_step"] < iterations, pruned
    assert f"MedianPruner at step {prune['min_step']}" in pruned["reason"]
    session.expire_all()
    assert session.get_one(Run, run_id).cancel_requested_at is not None  # its run is stopped, 90 of its 120 steps unrun


# --- promotion: more seeds until the leaderboard's test decides ------------------------------------
RESULT = {"status": "succeeded", "total_bytes": 15_900_000, "code_bytes": 60_000, "model_bytes": 15_840_000, "steps": 7000,
          "train_seconds": 599.0, "eval_seconds": 530.0, "world_size": 8, "trainer_revision": "0123abcd", "val_tokens_scored": 62_021_631,
          "val_tokens_total": 62_021_631, "ttt_protocol": "score_first", "train_shards": ["fineweb_train_000000.bin"],
          "val_shards": ["fineweb_val_000000.bin"], "gpu_name": "NVIDIA H100 80GB HBM3", "code_sha256": "c" * 64, "code_dirty": False,
          "train_fingerprints": ["a" * 64], "val_fingerprints": ["d" * 64]}  # as tests/api/test_api_groups.py: every rule passes


def _succeed(session: Session, run_ids: list[int], bpbs: list[float], minutes: float = 10) -> None:
    """As the executor: figures, the result and its rule checks (every one passing), SUCCEEDED."""
    from service.results.queries import judge_run

    now = utcnow()
    for run_id, bpb in zip(run_ids, bpbs, strict=True):
        run = session.get_one(Run, run_id)
        run.status, run.val_bpb, run.val_loss, run.started_at, run.finished_at = "SUCCEEDED", bpb, 2.4 * bpb, now - timedelta(minutes=minutes), now
        run.artifact_bytes, run.train_seconds, run.eval_seconds, run.result = 15_900_000, 599.0, 530.0, dict(RESULT)
        judge_run(run)
    session.commit()


def _baseline_group(client: TestClient, world: World, session: Session, spec, bpbs: list[float]) -> str:  # noqa: ANN001
    made = client.post("/api/v1/runs", json=spec(name="base", config={"MODEL_DIM": 512, "NUM_LAYERS": 12}, seeds=[1, 2, 3]),
                       headers=world.h("alice")).json()  # fmt: skip
    _succeed(session, [r["id"] for r in made["runs"]], bpbs)
    return made["group_key"]


def _promoted(client: TestClient, world: World, sid: int) -> tuple[dict, dict]:
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    return shown, shown["promotion"][0]


def _new_runs(session: Session, trial_runs: list[int], done: set[int]) -> list[int]:
    return [i for i in trial_runs if i not in done]


def _search(client: TestClient, world: World, session: Session, settings: Settings, promote: dict, values: tuple[float, float],
            **over: object) -> tuple[int, dict]:  # fmt: skip
    """A two-trial sweep of one seed each whose trials end at ``values``; the tick after they end starts promotion."""
    body = sweep_body(**{"space": {"NUM_LAYERS": {"values": [9, 10]}}, "seeds": [1], "promote": promote, "prune": None, **over})
    r = client.post("/api/v1/sweeps", json=body, headers=world.h("alice"))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert _tick(session, settings) == 2
    first, second = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    _succeed(session, first["run_ids"], [values[0]])
    _succeed(session, second["run_ids"], [values[1]])
    _tick(session, settings)
    return sid, client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()


def test_a_clearly_better_trial_is_promoted_until_better_and_record_eligible(client: TestClient, world: World, session: Session, settings: Settings, spec) -> None:  # noqa: ANN001
    base_key = _baseline_group(client, world, session, spec, [1.300, 1.301, 1.299])
    sid, shown = _search(client, world, session, settings, {"top": 1, "seeds": [7]}, (1.35, 1.100))
    [state] = shown["promotion"]
    trial = shown["trials"][1]
    assert state["trial"] == 2 and state["verdict"] == "testing" and state["rounds"] == 1 and "1 of min_seeds 3 succeeded" in state["why"]
    assert state["baseline"]["key"] == base_key  # the team's leader: trial 1 (1.35) is behind it
    runs = session.scalars(select(Run).where(Run.id.in_(trial["run_ids"]))).all()
    assert sorted(r.seed for r in runs) == [1, 2, 7] and {r.group_key for r in runs} == {trial["group_key"]}  # promote.seeds first, then 2
    assert trial["status"] == "running" and shown["status"] == "running"
    _tick(session, settings)
    assert session.scalar(select(Run.id).where(Run.seed == 3, Run.group_key == trial["group_key"])) is None  # twice is safe: no new round
    _succeed(session, [r.id for r in runs if r.seed != 1], [1.102, 1.099])
    _tick(session, settings)
    shown, state = _promoted(client, world, sid)
    assert state["verdict"] == "better" and state["succeeded"] == 3 and state["seeds"] == [1, 2, 7], state
    assert state["p_value"] < 0.01 and state["improvement"] > state["margin"] > 0 and state["unit"] == "nats per byte"
    assert state["record_eligible"] is True and state["headline"] == f"better at p = {state['p_value']:.3g} < 0.01 over 3 seeds (baseline 3)"
    assert shown["status"] == "done" and "#2 better (3 seeds, p = " in shown["status_reason"], shown["status_reason"]
    assert "; record-eligible)" in shown["status_reason"]
    assert shown["result"]["group_key"] == trial["group_key"] and shown["result"]["verdict"] == "better" and shown["result"]["record_eligible"]
    group = client.get(f"/api/v1/groups/{trial['group_key']}", headers=world.h("alice")).json()
    assert group["eligibility"]["eligible"] is True, group["eligibility"]  # the group page agrees: ready to export
    # `caddie sweep show` prints what the API says: where promotion stands and the group to export.
    from cli.sweeps import sweep_detail

    said = "\n".join(part for part in sweep_detail(shown) if isinstance(part, str))
    assert f"promoted #2 {state['headline']}: seeds 1, 2, 7 (3 succeeded, 1 round(s)), val_bpb 1.1003, p = " in said, said
    assert "against margin 0.00144 nats per byte, against base" in said and f"caddie export {trial['group_key'][:12]}" in said


def test_a_trial_that_is_not_better_stops_not_better(client: TestClient, world: World, session: Session, settings: Settings, spec) -> None:  # noqa: ANN001
    _baseline_group(client, world, session, spec, [1.300, 1.301, 1.299])
    sid, shown = _search(client, world, session, settings, {"top": 1}, (1.35, 1.2995))
    trial = shown["trials"][1]
    assert shown["promotion"][0]["verdict"] == "testing"
    _succeed(session, trial["run_ids"][1:], [1.3005, 1.2990])
    _tick(session, settings)
    shown, state = _promoted(client, world, sid)
    assert state["verdict"] == "not_better" and "no number of seeds makes this significant" in state["why"], state
    assert state["succeeded"] == 3 and state["rounds"] == 1 and shown["status"] == "done" and "#2 not better" in shown["status_reason"]
    assert shown["result"]["verdict"] == "not_better" and shown["result"]["record_eligible"] is False


def test_a_one_seed_baseline_ends_promotion_at_once_and_a_named_one_is_used(client: TestClient, world: World, session: Session,
                                                                            settings: Settings, spec) -> None:  # noqa: ANN001
    # No public record imported, no other group: the team's leader besides trial 2 is trial 1, one seed.
    sid, shown = _search(client, world, session, settings, {"top": 1}, (1.35, 1.100))
    state = shown["promotion"][0]
    assert state["verdict"] == "no_verdict" and "the baseline has 1 succeeded seed(s)" in state["why"] and state["rounds"] == 0, state
    assert len(shown["trials"][1]["run_ids"]) == 1 and shown["status"] == "done"  # no seed spent
    base_key = _baseline_group(client, world, session, spec, [1.300, 1.301, 1.299])
    _, shown = _search(client, world, session, settings, {"top": 1, "baseline": base_key[:10]}, (1.36, 1.101),
                        space={"NUM_LAYERS": {"values": [10, 11]}})  # trial 2 (11 layers) is a group of its own
    state = shown["promotion"][0]
    assert state["verdict"] == "testing" and state["baseline"]["key"] == base_key and state["rounds"] == 1, state
    assert state["seeds"] == [1] and len(shown["trials"][1]["run_ids"]) == 3  # two more toward min_seeds


def test_off_8x_h100_promotion_runs_to_the_tests_verdict_and_says_it_is_no_record(client: TestClient, world: World, session: Session,
                                                                                    settings: Settings, spec) -> None:  # noqa: ANN001
    """The unlimited track on 1x H100: the time rules are not comparable there, so no group is a record, but the best trial
    against a baseline of the same track and hardware is a valid test: promotion spends its seeds and says better or not."""
    where = {"track": "unlimited", "hardware": "H100:1"}
    made = client.post("/api/v1/runs", json=spec(name="base", config={"MODEL_DIM": 512, "NUM_LAYERS": 12}, seeds=[1, 2, 3], **where),
                       headers=world.h("alice")).json()  # fmt: skip
    _succeed(session, [r["id"] for r in made["runs"]], [1.300, 1.301, 1.299])
    sid, shown = _search(client, world, session, settings, {"top": 1, "baseline": made["group_key"]}, (1.35, 1.100), **where)
    state = shown["promotion"][0]
    assert state["verdict"] == "testing" and state["rounds"] == 1 and state["record_eligible"] is False, state
    assert "checks not comparable: train_time, eval_time (records are judged on the 10min_16mb track's rules on 8x H100)" in state["record_why"]
    trial = shown["trials"][1]
    _succeed(session, trial["run_ids"][1:], [1.102, 1.099])
    _tick(session, settings)
    shown, state = _promoted(client, world, sid)
    assert state["verdict"] == "better" and state["p_value"] < 0.01 and state["succeeded"] == 3 and state["record_eligible"] is False, state
    assert shown["status"] == "done" and "#2 better (3 seeds, p = " in shown["status_reason"] and "not record-eligible" in shown["status_reason"]
    assert shown["result"]["verdict"] == "better"
    from cli.sweeps import sweep_detail

    said = "\n".join(part for part in sweep_detail(shown) if isinstance(part, str))
    assert f"result: group {trial['group_key']} is {state['headline']}; not record-eligible: checks not comparable" in said, said
    assert "caddie export" not in said


def test_a_tick_that_dies_between_a_rounds_runs_and_its_record_is_finished_by_the_next(client: TestClient, world: World, session: Session,
                                                                                        settings: Settings, spec) -> None:  # noqa: ANN001
    from service.core.models import Sweep

    _baseline_group(client, world, session, spec, [1.300, 1.301, 1.299])
    sid, shown = _search(client, world, session, settings, {"top": 1}, (1.35, 1.100))
    trial = shown["trials"][1]
    made = trial["run_ids"][1:]
    assert len(made) == 2
    # Roll the rows back to just after submit_runs committed the round's runs, before the trial and the state were written.
    sweep = session.get_one(Sweep, sid)
    state = sweep.spec["promotion"]["2"]
    sweep.spec = {**sweep.spec, "promotion": {"2": {**state, "rounds": 0, "pending": {"round": 1, "seeds": [2, 3]}}}}
    row = session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sid, SweepTrial.number == 2)).one()
    row.run_ids, row.status = trial["run_ids"][:1], "complete"
    session.commit()
    _tick(session, settings)
    shown, state = _promoted(client, world, sid)
    assert shown["trials"][1]["run_ids"] == trial["run_ids"] and state["rounds"] == 1  # the same runs back
    session.expire_all()
    assert session.get_one(Sweep, sid).spec["promotion"]["2"]["pending"] is None
    assert session.scalar(select(func.count()).select_from(Run).where(Run.group_key == trial["group_key"])) == 3


def test_the_budget_ends_promotion(client: TestClient, world: World, session: Session, settings: Settings, spec) -> None:  # noqa: ANN001
    _baseline_group(client, world, session, spec, [1.300, 1.301, 1.299])
    from service.queue.estimates import expected_seconds, gpu_hours

    per_run = gpu_hours("H100:8", expected_seconds({"MODEL_DIM": 512}, settings.run_overhead_s))  # what a run may use: 4 GPU-hours
    # The search may commit 2 trials x 4 of the 9 (1 is kept for promotion); its two runs use 1.33 each (10 minutes):
    # 6.33 left, one seed fits, not the two min_seeds asks for.
    sid, shown = _search(client, world, session, settings, {"top": 1, "reserve_gpu_hours": 1.0}, (1.35, 1.100), budget_gpu_hours=2 * per_run + 1)
    state = shown["promotion"][0]
    assert state["verdict"] == "testing" and state["why"].startswith("1 more seed(s)"), state  # the round trimmed to what fits
    trial = shown["trials"][1]
    assert len(trial["run_ids"]) == 2
    _succeed(session, trial["run_ids"][1:], [1.101], minutes=30)  # 4 GPU-hours: 2.33 left
    _tick(session, settings)
    shown, state = _promoted(client, world, sid)
    assert state["verdict"] == "budget" and "GPU-hour budget has 2.33 left, a seed may use 4.00" in state["why"] and state["succeeded"] == 2, state
    assert shown["status"] == "done" and "#2 budget" in shown["status_reason"]



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


def test_a_pruned_run_that_ends_on_its_step_count_saves_its_steps_left_not_its_cap(client: TestClient, world: World, session: Session,
                                                                                     settings: Settings) -> None:  # fmt: skip
    # 1,000 steps at 200 ms each under a 600 s cap: pruned at step 700, it had 60 s of training left, not the cap's rest.
    body = sweep_body(base={"STACK": "2026-03-23", "MODEL_DIM": 512, "ITERATIONS": 1000, "MAX_WALLCLOCK_SECONDS": 600},
                      space={"NUM_LAYERS": {"values": [9, 10]}}, seeds=[1], pruner="median", prune={"min_step": 500, "startup_trials": 1})  # fmt: skip
    sid = client.post("/api/v1/sweeps", json=body, headers=world.h("alice")).json()["id"]
    assert _tick(session, settings) == 2
    first, second = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    session.add_all([Metric(run_id=first["run_ids"][0], kind="train", step=s, train_loss=3.0 - s / 2000, attempt=1) for s in range(100, 1001, 100)])
    _end(session, first["run_ids"], 1.20)
    running = second["run_ids"][0]
    session.execute(update(Run).where(Run.id == running).values(status="RUNNING", started_at=utcnow() - timedelta(minutes=3)))
    session.add_all([Metric(run_id=running, kind="train", step=s, train_loss=2.9, elapsed_ms=200.0 * s, attempt=1) for s in range(100, 701, 100)])
    session.commit()
    _tick(session, settings)
    pruned = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"][1]
    assert pruned["status"] == "pruned", pruned
    assert abs(pruned["saved_gpu_hours"] - 8 * 60 / 3600) < 1e-6  # 8 GPUs x 300 steps x 0.2 s (the cap counted the rest of 600 s + the overhead)
