"""Script sweeps through the API: a team's own train_gpt.py as the base, its space env variables of the script;
each trial a script run group through the ordinary submission (the bytes stored once), promotion more seeds of it."""

from __future__ import annotations

import base64
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core.models import Run, ScriptFile, Sweep, utcnow
from service.core.settings import Settings
from service.queue.estimates import expected_seconds
from service.runs.scripts.spec import sha256_hex
from service.sweeps.store import _config, advance_sweeps
from tests.sweeps.test_sweeps_api import RECORDS
from tests.world import World

SCRIPT = b"import os\nprint('val_bpb', os.environ['LR'])\n"
HELPER = b"X = 1\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def script_body(**over: object) -> dict:
    body: dict = {"name": "lr", "track": "10min_16mb", "hardware": "H100:8", "script": _b64(SCRIPT),
                  "files": [{"name": "helper.py", "content": _b64(HELPER)}], "env": {"MAX_WALLCLOCK_SECONDS": 300, "WARMDOWN": "0.5"},
                  "space": {"LR": {"low": 0.01, "high": 0.1, "log": True, "steps": 3}, "LAYERS": {"values": [9, 11]}},
                  "strategy": "grid", "seeds": [1, 2], "max_trials": 3, "max_parallel": 2}  # fmt: skip
    body.update(over)
    return body


def _tick(session: Session, settings: Settings) -> int:
    session.expire_all()
    return advance_sweeps(session, settings, records=RECORDS)


def test_a_script_sweep_runs_its_trials_as_script_run_groups(client: TestClient, world: World, session: Session, settings: Settings) -> None:
    r = client.post("/api/v1/sweeps", json=script_body(), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    s = r.json()
    base = s["spec"]["base"]
    assert s["spec"]["kind"] == "script" and base["script"] == sha256_hex(SCRIPT) and base["data"] == "sp1024"
    assert base["env"] == {"MAX_WALLCLOCK_SECONDS": "300", "WARMDOWN": "0.5"} and base["files"] == {"helper.py": sha256_hex(HELPER)}
    assert s["spec"]["space"]["LR"] == {"low": 0.01, "high": 0.1, "log": True, "steps": 3}

    assert _tick(session, settings) == 2
    trials = client.get(f"/api/v1/sweeps/{s['id']}", headers=world.h("alice")).json()["trials"]
    assert [t["params"] for t in trials] == [{"LR": 0.01, "LAYERS": 9}, {"LR": 0.01, "LAYERS": 11}]  # ints stay ints
    runs = session.scalars(select(Run).where(Run.id.in_(trials[0]["run_ids"]))).all()
    assert sorted(r.seed for r in runs) == [1, 2] and {r.kind for r in runs} == {"script"} and {r.status for r in runs} == {"QUEUED"}
    assert runs[0].spec["env"] == {"LAYERS": "9", "LR": "0.01", "MAX_WALLCLOCK_SECONDS": "300", "WARMDOWN": "0.5"}
    assert runs[0].spec["script"] == sha256_hex(SCRIPT) and runs[0].spec["files"] == {"helper.py": sha256_hex(HELPER)}
    assert {r.group_key for r in runs} == {trials[0]["group_key"]} != {trials[1]["group_key"]}
    stored = session.scalar(select(func.count()).select_from(ScriptFile).where(ScriptFile.sha256 == sha256_hex(SCRIPT)))
    assert stored == 1  # the bytes once, however many trials and runs name them

    # The budget's expected seconds: the script's MAX_WALLCLOCK_SECONDS (300 s) + overhead, not the track's 600 s.
    sweep = session.get_one(Sweep, s["id"])
    assert expected_seconds(_config(sweep, {"LR": 0.01}), 0) == 300

    now = utcnow()
    for t, bpb in zip(trials, (1.21, 1.19), strict=True):
        session.execute(update(Run).where(Run.id.in_(t["run_ids"])).values(status="SUCCEEDED", val_bpb=bpb, val_loss=bpb / 0.6,
                        started_at=now - timedelta(minutes=5), finished_at=now), execution_options={"synchronize_session": False})  # fmt: skip
    session.commit()
    assert _tick(session, settings) == 1  # max_trials 3
    shown = client.get(f"/api/v1/sweeps/{s['id']}", headers=world.h("alice")).json()
    assert shown["best"]["number"] == 2 and shown["best"]["params"] == {"LR": 0.01, "LAYERS": 11}


def test_script_sweep_space_names_are_env_names(client: TestClient, world: World, settings: Settings) -> None:
    def refused(**over: object) -> list[dict]:
        r = client.post("/api/v1/sweeps", json=script_body(**over), headers=world.h("alice"))
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    bad = refused(space={"lr": {"values": [1, 2]}, "SEED": {"values": [1, 2]}, "LD_PRELOAD": {"values": ["a"]}})
    assert {tuple(d["loc"][-2:]) for d in bad} >= {("space", "lr"), ("space", "SEED"), ("space", "LD_PRELOAD")}
    assert any("reserved" in d["msg"] for d in bad if d["loc"][-1] == "SEED")
    bad = refused(space={"WARMDOWN": {"values": [0.1, 0.2]}})  # set in env too
    assert bad[0]["loc"][-2:] == ["space", "WARMDOWN"] and "also set in env" in bad[0]["msg"]
    bad = refused(space={"LR": {"values": [1, "1"]}})  # the same text to the script
    assert bad[0]["loc"][-3:] == ["space", "LR", "values"]
    bad = refused(space={"LR": {"values": ["x" * (settings.max_script_env_value_chars + 1)]}})  # a value no run takes
    assert bad[0]["loc"][-4:] == ["space", "LR", "values", 0] and "CADDIE_MAX_SCRIPT_ENV_VALUE_CHARS" in bad[0]["msg"]
    bad = refused(space={"LR": {"low": 0, "high": 1, "log": True}})
    assert bad[0]["loc"][-3:] == ["space", "LR", "low"]
    bad = refused(base={"NUM_LAYERS": 9})  # a script's base is its env, not the trainer's knobs
    assert bad[0]["loc"][-1] == "base"
    bad = refused(script="not base64!")
    assert bad[0]["loc"][-1] == "script"

    # A trainer knob's name is an env variable of the script (the challenge's scripts read the same names); the trainer's
    # bounds are not the script's, so a value outside them is taken as it is.
    r = client.post("/api/v1/sweeps", json=script_body(space={"MATRIX_LR": {"values": [-5.0, 0.04]}}), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/sweeps", json=script_body(script=None, files=[], env={}, space={"MATRIX_LR": {"values": [-5.0]}}), headers=world.h("alice"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-4:-2] == ["space", "MATRIX_LR"]  # a trainer sweep checks its bounds


def test_a_script_sweeps_best_trial_is_promoted_with_more_seeds_of_its_script_group(client: TestClient, world: World, session: Session,
                                                                                     settings: Settings, spec) -> None:  # noqa: ANN001
    from tests.sweeps.test_sweeps_api import _baseline_group, _succeed

    _baseline_group(client, world, session, spec, [1.300, 1.301, 1.299])  # the team's leader, three seeds: a test to run
    body = script_body(space={"LR": {"values": [0.01, 0.03]}}, seeds=[1], prune=None, promote={"top": 1, "seeds": [7], "max_seeds": 4})
    r = client.post("/api/v1/sweeps", json=body, headers=world.h("alice"))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert _tick(session, settings) == 2
    first, second = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    _succeed(session, first["run_ids"], [1.35])
    _succeed(session, second["run_ids"], [1.10])
    _tick(session, settings)
    shown = client.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()
    [state] = shown["promotion"]
    trial = shown["trials"][1]
    assert state["trial"] == 2 and state["verdict"] == "testing" and state["rounds"] == 1, state
    runs = session.scalars(select(Run).where(Run.id.in_(trial["run_ids"]))).all()
    assert sorted(r.seed for r in runs) == [1, 2, 7] and {r.group_key for r in runs} == {trial["group_key"]}  # the same script group
    assert {r.kind for r in runs} == {"script"} and {r.spec["env"]["LR"] for r in runs} == {"0.03"}
    assert {r.spec["script"] for r in runs} == {sha256_hex(SCRIPT)}


def test_env_ranges_keep_ints_and_proposals_stay_inside() -> None:
    from service.sweeps.space import parse_env_space
    from service.sweeps.strategies import propose

    space = parse_env_space({"N": {"low": 2, "high": 8}, "LR": {"low": 1e-3, "high": 1e-1, "log": True}, "OPT": {"values": ["adam", "muon"]}}, {})
    assert [(k.name, k.kind) for k in space.knobs] == [("N", "int"), ("LR", "float"), ("OPT", "str")]
    for strategy in ("random", "tpe"):
        params = propose(strategy, space, [], seed=1)
        assert params is not None and isinstance(params["N"], int) and 2 <= params["N"] <= 8 and space.contains(params)
