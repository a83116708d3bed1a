"""Pre-flight checks of a spec, through the API on PostgreSQL and SQLite: the artifact size
estimate of a 10min_16mb config (service.runs.size_check) and the abort_if_behind rule."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.models import Run
from service.runs import size_check
from tests.factories import make_run
from trainer.config import TrainerConfig

RUNS = "/api/v1/runs"
SEED_STACK = {"STACK": "2026-03-23"}  # a stored seed-stack spec: TrainerConfig() (a stored {} is the 2026-04-27 stack)
BIG = {"NUM_LAYERS": 13}  # 24,015,058 packed bytes: 16,890,541 with the default ratio 0.70 and 80,000 bytes of code


def test_a_config_that_cannot_fit_is_refused_saying_by_how_much(client: TestClient, world, spec, session: Session) -> None:
    h = world.h("alice")
    r = client.post(RUNS, json=spec(config=BIG), headers=h)
    assert r.status_code == 422
    [issue] = r.json()["detail"]
    assert issue["loc"][-1] == "config" and "16,890,541 bytes, 890,541 over the 16,000,000-byte limit" in issue["msg"]
    assert "allow_noncompliant" in issue["msg"] and session.query(Run).count() == 0  # nothing stored
    assert client.post(RUNS, json=spec(config=BIG, allow_noncompliant=True), headers=h).status_code == 201
    assert client.post(RUNS, json=spec(config=BIG, track="unlimited"), headers=h).status_code == 201
    assert client.post(RUNS, json=spec(config={"NUM_LAYERS": 11}), headers=h).status_code == 201  # the seed stack fits


def test_the_2026_04_27_stack_fits_and_a_wider_one_is_refused(client: TestClient, world, spec) -> None:
    h = world.h("alice")
    assert client.post(RUNS, json=spec(config={"STACK": "2026-04-27"}), headers=h).status_code == 201
    r = client.post(RUNS, json=spec(config={"STACK": "2026-04-27", "MODEL_DIM": 576}), headers=h)
    assert r.status_code == 422
    [issue] = r.json()["detail"]
    assert issue["loc"][-1] == "config" and "over the 16,000,000-byte limit" in issue["msg"] and "compression 0.57" in issue["msg"]


def test_the_ratio_is_measured_on_the_teams_finished_runs(client: TestClient, world, spec, session: Session) -> None:
    # A finished seed-stack run of team-a whose artifact compressed to half its packed size: 13 layers fit at that ratio.
    packed = size_check.packed_bytes(TrainerConfig())
    session.add(make_run(world.team_ids["team-a"], world.user_ids["alice"], name="done", group_key="d" * 64, track="10min_16mb", hardware="H100:8",
                         spec=SEED_STACK, status="SUCCEEDED", model_bytes=packed // 2, code_bytes=60_000))  # fmt: skip
    session.commit()
    assert client.post(RUNS, json=spec(config=BIG), headers=world.h("alice")).status_code == 201
    r = client.post(RUNS, json=spec(config=BIG), headers=world.h("bob"))  # team-b has no such run: the default ratio
    assert r.status_code == 422 and "the default" in r.json()["detail"][0]["msg"]


def test_abort_if_behind_is_checked_and_stored(client: TestClient, world, spec) -> None:
    h = world.h("alice")
    for rule, field, words in [
        ({"step": 0, "margin": 0.02}, "step", "greater than or equal to 1"),
        ({"step": 1000, "margin": 11}, "margin", "less than or equal to 10"),
        ({"step": 1000, "margin": -0.1}, "margin", "greater than or equal to 0"),
        ({"step": 1100, "margin": 0.02}, "step", "every 200 steps"),
        ({"step": 1000}, "margin", "required"),
    ]:
        r = client.post(RUNS, json=spec(abort_if_behind=rule), headers=h)
        assert r.status_code == 422, rule
        assert any(i["loc"][-2:] == ["abort_if_behind", field] and words in i["msg"].lower() for i in r.json()["detail"]), r.json()
    r = client.post(RUNS, json=spec(abort_if_behind={"step": 1000, "margin": 0.02}), headers=h)
    assert r.status_code == 201
    run = client.get(f"{RUNS}/{r.json()['runs'][0]['id']}", headers=h).json()
    assert run["abort_if_behind"] == {"step": 1000, "margin": 0.02} and run["saved_seconds"] is None


def test_a_finished_runs_config_is_parsed_once_not_per_submit(world, session: Session, monkeypatch) -> None:  # noqa: ANN001
    packed = size_check.packed_bytes(TrainerConfig())
    session.add(make_run(world.team_ids["team-a"], world.user_ids["alice"], name="done", group_key="e" * 64, track="10min_16mb", hardware="H100:8",
                         spec=SEED_STACK, status="SUCCEEDED", model_bytes=packed // 2, code_bytes=60_000))  # fmt: skip
    session.commit()
    monkeypatch.setattr(size_check, "_packed_by_run", {})
    parsed: list[object] = []
    real = size_check._config_or_none
    monkeypatch.setattr(size_check, "_config_or_none", lambda spec: parsed.append(spec) or real(spec))
    first = size_check.measured(session, world.team_ids["team-a"])
    assert first == ([packed // 2 / packed], [60_000]) and len(parsed) == 1
    assert size_check.measured(session, world.team_ids["team-a"]) == first and len(parsed) == 1  # the second submit parses nothing
