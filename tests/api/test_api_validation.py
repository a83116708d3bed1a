"""Bad run specs: 422 naming the field and the limit, and nothing stored."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import Run, RunEvent

RUNS = "/api/v1/runs"

# (id, changes to the valid spec, expected loc, words the message must contain)
CASES = [
    ("unknown-knob", {"config": {"NUM_LAYRES": 9}}, ["body", "config", "NUM_LAYRES"], ["unknown knob"]),
    ("wrong-type-int", {"config": {"NUM_LAYERS": "nine"}}, ["body", "config", "NUM_LAYERS"], ["integer"]),
    ("float-for-int", {"config": {"NUM_LAYERS": 9.5}}, ["body", "config", "NUM_LAYERS"], ["integer"]),
    ("wrong-type-bool", {"config": {"TTT_ENABLED": "maybe"}}, ["body", "config", "TTT_ENABLED"], ["boolean"]),
    ("too-high", {"config": {"NUM_LAYERS": 65}}, ["body", "config", "NUM_LAYERS"], ["<= 64"]),
    ("too-low", {"config": {"MATRIX_LR": -1}}, ["body", "config", "MATRIX_LR"], [">= 0"]),
    ("bad-choice", {"config": {"MLP_ACTIVATION": "gelu"}}, ["body", "config", "MLP_ACTIVATION"], ["leaky_relu2"]),
    ("heads-not-dividing-width", {"config": {"NUM_HEADS": 7}}, ["body", "config", "NUM_HEADS"], ["MODEL_DIM=512"]),
    ("kv-heads", {"config": {"NUM_KV_HEADS": 3}}, ["body", "config", "NUM_KV_HEADS"], ["NUM_HEADS=8"]),
    ("xsa-over-layers", {"config": {"NUM_LAYERS": 2}}, ["body", "config", "XSA_LAST_N"], ["NUM_LAYERS=2"]),
    ("seed-in-config", {"config": {"SEED": 3}}, ["body", "config", "SEED"], ["seeds"]),
    ("too-many-seeds", {"seeds": list(range(17))}, ["body", "seeds"], ["16"]),
    ("duplicate-seeds", {"seeds": [1, 2, 1]}, ["body", "seeds"], ["unique", "1"]),
    ("no-seeds", {"seeds": []}, ["body", "seeds"], ["at least 1"]),
    ("negative-seed", {"seeds": [-1]}, ["body", "seeds", 0], ["greater than or equal to 0"]),
    ("string-seed", {"seeds": ["42"]}, ["body", "seeds", 0], ["integer"]),
    ("seed-and-seeds", {"seed": 1}, ["body", "seed"], ["not both"]),
    ("unknown-track", {"track": "5min_8mb"}, ["body", "track"], ["10min_16mb", "unlimited"]),
    ("unknown-hardware", {"hardware": "A100:8"}, ["body", "hardware"], ["H100:8"]),
    ("empty-name", {"name": ""}, ["body", "name"], ["at least 1"]),
    ("long-name", {"name": "x" * 201}, ["body", "name"], ["200"]),
    ("long-notes", {"notes": "x" * 10_001}, ["body", "notes"], ["10000"]),
    ("unknown-field", {"num_layers": 9}, ["body", "num_layers"], ["not permitted"]),
    ("config-not-object", {"config": [1, 2]}, ["body", "config"], ["dictionary"]),
    ("priority-range", {"priority": 1000}, ["body", "priority"], ["<= 100"]),
]


def _stored(session: Session) -> tuple[int, int]:
    session.expire_all()
    return (session.scalar(select(func.count()).select_from(Run)), session.scalar(select(func.count()).select_from(RunEvent)))


@pytest.mark.parametrize(("changes", "loc", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_is_refused_naming_field_and_limit(client: TestClient, world, spec, session: Session, changes, loc, words) -> None:
    before = _stored(session)
    r = client.post(RUNS, json=spec(**changes), headers=world.h("alice"))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    matching = [d for d in detail if d["loc"] == loc]
    assert matching, detail
    for word in words:
        assert word in matching[0]["msg"], (word, matching[0]["msg"])
    assert _stored(session) == before


def test_every_problem_is_reported_at_once(client: TestClient, world, spec) -> None:
    r = client.post(RUNS, json=spec(track="nope", hardware="nope", seeds=[1, 1], config={"NUM_LAYERS": 0}), headers=world.h("alice"))
    assert r.status_code == 422
    assert {tuple(d["loc"]) for d in r.json()["detail"]} == {("body", "track"), ("body", "hardware"), ("body", "seeds"), ("body", "config", "NUM_LAYERS")}


def test_spec_over_the_size_limit(client: TestClient, world, spec, session: Session) -> None:
    body = json.dumps(spec(notes="", config={"VE_LAYERS": "1," * 40_000}))
    assert len(body) > 65536
    r = client.post(RUNS, content=body, headers={**world.h("alice"), "Content-Type": "application/json"})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body"] and "65536 bytes" in detail["msg"]
    assert _stored(session) == (0, 0)


def test_exactly_sixteen_seeds_is_fine(client: TestClient, world, spec) -> None:
    r = client.post(RUNS, json=spec(seeds=list(range(16))), headers=world.h("alice"))
    assert r.status_code == 201 and len(r.json()["runs"]) == 16


def test_malformed_json(client: TestClient, world) -> None:
    r = client.post(RUNS, content=b"{not json", headers={**world.h("alice"), "Content-Type": "application/json"})
    assert r.status_code == 422


def test_bad_list_parameters(client: TestClient, world) -> None:
    h = world.h("alice")
    for params, loc in [({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"status": "DONE"}, "status"), ({"cursor": "!!"}, "cursor")]:
        r = client.get(RUNS, params=params, headers=h)
        assert r.status_code == 422, params
        assert r.json()["detail"][0]["loc"] == ["query", loc]
