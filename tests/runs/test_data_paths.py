"""A spec never names a server path: DATA_PATH / TOKENIZER_PATH / OUTPUT_DIR are refused with a
422 naming the knob, and the data variant (sp<VOCAB_SIZE>) must be one caddie has."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.models import Run

RUNS = "/api/v1/runs"


@pytest.mark.parametrize(
    ("knob", "value"),
    [("DATA_PATH", "/etc"), ("TOKENIZER_PATH", "/etc/passwd"), ("data_path", "../../../etc"), ("OUTPUT_DIR", "/root")],
)
def test_a_path_in_a_spec_is_refused_and_nothing_is_stored(client: TestClient, world, spec, session: Session, knob: str, value: str) -> None:
    before = session.scalar(select(func.count()).select_from(Run))
    r = client.post(RUNS, json=spec(config={"NUM_LAYERS": 9, knob: value}), headers=world.h("alice"))
    assert r.status_code == 422, r.text
    [issue] = [d for d in r.json()["detail"] if d["loc"][:2] == ["body", "config"]]
    assert issue["loc"][-1] == knob
    assert ("data variant" in issue["msg"] and "never names a path" in issue["msg"]) or knob == "OUTPUT_DIR", issue
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(Run)) == before


def test_the_data_variant_follows_vocab_size_and_must_be_one_caddie_has(client: TestClient, world, spec) -> None:
    ok = client.post(RUNS, json=spec(track="unlimited", config={"VOCAB_SIZE": 4096}), headers=world.h("alice"))
    assert ok.status_code in (200, 201), ok.text
    bad = client.post(RUNS, json=spec(track="unlimited", config={"VOCAB_SIZE": 2048}), headers=world.h("alice"))
    assert bad.status_code == 422, bad.text
    [issue] = [d for d in bad.json()["detail"] if d["loc"] == ["body", "config", "VOCAB_SIZE"]]
    assert "no data variant sp2048" in issue["msg"] and "1024, 4096, 8192" in issue["msg"]


def test_caseops_picks_its_variant_and_needs_a_deployment_that_serves_it(settings, world, spec) -> None:
    with TestClient(create_app(settings.model_copy(update={"data_variants": "sp1024,sp8192"}))) as c:
        r = c.post(RUNS, json=spec(config={"STACK": "2026-04-27", "CASEOPS_ENABLED": True}), headers=world.h("alice"))
        assert r.status_code == 422, r.text
        [issue] = [d for d in r.json()["detail"] if d["loc"] == ["body", "config", "CASEOPS_ENABLED"]]
        assert "no data variant sp8192_caseops" in issue["msg"]
        r = c.post(RUNS, json=spec(config={"CASEOPS_ENABLED": True, "VOCAB_SIZE": 1024}), headers=world.h("alice"))
        assert r.status_code == 422 and "needs VOCAB_SIZE=8192" in r.text
    with TestClient(create_app(settings.model_copy(update={"data_variants": "sp8192_caseops"}))) as c:
        r = c.post(RUNS, json=spec(config={"STACK": "2026-04-27", "CASEOPS_ENABLED": True}), headers=world.h("alice"))
        assert r.status_code == 201, r.text


def test_a_stack_preset_s_vocabulary_picks_the_variant(settings, world, spec) -> None:
    # STACK=2026-04-27 sets VOCAB_SIZE 8192 without the spec naming it: a deployment serving only sp1024 refuses it
    with TestClient(create_app(settings.model_copy(update={"data_variants": "sp1024"}))) as c:
        r = c.post(RUNS, json=spec(config={"STACK": "2026-04-27"}), headers=world.h("alice"))
        assert r.status_code == 422, r.text
        [issue] = [d for d in r.json()["detail"] if d["loc"] == ["body", "config", "VOCAB_SIZE"]]
        assert "no data variant sp8192" in issue["msg"] and issue["input"] == 8192
        assert c.post(RUNS, json=spec(config={"STACK": "2026-04-27", "VOCAB_SIZE": 1024}), headers=world.h("alice")).status_code == 201
