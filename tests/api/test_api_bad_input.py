"""Input no client should send, and that once gave a 500: NaN and infinities,
lone surrogates, control characters, NUL, integers past what the database holds.
Each is a 422 naming the field (and the limit where there is one), the error
body is valid JSON, and what was stored before is untouched."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import ApiToken, Run, RunEvent, Team, User
from service.http.deps import ID_MAX
from service.runs.schemas import QUEUE_FIELDS

RUNS = "/api/v1/runs"
SPEC = '{"name": "n", "track": "10min_16mb", "hardware": "H100:8", %s}'

# (id, raw JSON body of POST /runs, loc of the error, words in its message)
BAD_NUMBERS = [
    ("nan-priority", SPEC % '"priority": NaN', ["body", "priority"], "finite"),
    ("inf-priority", SPEC % '"priority": Infinity', ["body", "priority"], "finite"),
    ("overflow-priority", SPEC % '"priority": 1e999', ["body", "priority"], "finite"),
    ("nan-seed", SPEC % '"seeds": [NaN]', ["body", "seeds", 0], "integer"),
    ("inf-knob", SPEC % '"config": {"MATRIX_LR": Infinity}', ["body", "config", "MATRIX_LR"], "<= 10.0"),
    ("minus-inf-knob", SPEC % '"config": {"MATRIX_LR": -Infinity}', ["body", "config", "MATRIX_LR"], ">= 0.0"),
    ("overflow-knob", SPEC % '"config": {"NUM_LAYERS": 1e999}', ["body", "config", "NUM_LAYERS"], "integer"),
    ("nan-unknown-knob", SPEC % '"config": {"NOPE": NaN}', ["body", "config", "NOPE"], "unknown knob"),
    ("nan-name", SPEC.replace('"name": "n", ', "") % '"name": NaN', ["body", "name"], "string"),
]

SURROGATE = '"\\ud800"'  # JSON text for a lone surrogate
BAD_TEXT = [
    ("surrogate-name", SPEC.replace('"n"', SURROGATE) % '"seed": 1', ["body", "name"], "unicode"),
    ("surrogate-notes", SPEC % f'"notes": {SURROGATE}', ["body", "notes"], "unicode"),
    ("surrogate-knob", SPEC % f'"config": {{"VE_LAYERS": {SURROGATE}}}', ["body", "config", "VE_LAYERS"], "surrogate"),
    ("surrogate-choice-knob", SPEC % f'"config": {{"MLP_ACTIVATION": {SURROGATE}}}', ["body", "config", "MLP_ACTIVATION"], "surrogate"),
    ("surrogate-team", SPEC % f'"team": {SURROGATE}', ["body", "team"], "unicode"),
    ("nul-knob", SPEC % '"config": {"DATA_PATH": "a\\u0000b"}', ["body", "config", "DATA_PATH"], "NUL"),
    ("nul-notes", SPEC % '"notes": "a\\u0000b"', ["body", "notes"], "\\x00"),
    ("escape-in-name", SPEC.replace('"n"', '"red \\u001b[31m"') % '"seed": 1', ["body", "name"], "\\x1b"),
    ("clear-screen-in-notes", SPEC % '"notes": "\\u001b[2J"', ["body", "notes"], "\\x1b"),
    ("newline-in-name", SPEC.replace('"n"', '"two\\nlines"') % '"seed": 1', ["body", "name"], "\\x0a"),
    ("del-in-name", SPEC.replace('"n"', '"a\\u007f"') % '"seed": 1', ["body", "name"], "\\x7f"),
    ("c1-csi-in-name", SPEC.replace('"n"', '"a\\u009b31m"') % '"seed": 1', ["body", "name"], "\\x9b"),
    ("bidi-override-in-name", SPEC.replace('"n"', '"abc\\u202egnp.exe"') % '"seed": 1', ["body", "name"], "\\u202e"),
    ("space-in-team", SPEC % '"team": "team a"', ["body", "team"], "pattern"),
]


def _stored(session: Session) -> tuple[int, ...]:
    session.expire_all()
    return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Run, RunEvent, Team, User, ApiToken))


def _error(r, loc: list) -> dict:
    """The error at ``loc`` (its messages joined, when several rules refuse one value)."""
    assert r.status_code == 422, r.text
    body = json.loads(r.content.decode("utf-8"))  # strict: valid UTF-8 and valid JSON
    matching = [d for d in body["detail"] if d["loc"] == loc]
    assert matching, body
    return {**matching[0], "msg": "; ".join(d["msg"] for d in matching)}


@pytest.mark.parametrize(("raw", "loc", "words"), [c[1:] for c in BAD_NUMBERS + BAD_TEXT], ids=[c[0] for c in BAD_NUMBERS + BAD_TEXT])
def test_bad_body_is_a_422_naming_the_field(client: TestClient, world, session: Session, raw: str, loc: list, words: str) -> None:
    before = _stored(session)
    r = client.post(RUNS, content=raw, headers={**world.h("alice"), "Content-Type": "application/json"})
    assert words in _error(r, loc)["msg"]
    assert _stored(session) == before


def test_notes_keep_tabs_and_line_breaks(client: TestClient, world, spec) -> None:
    r = client.post(RUNS, json=spec(notes="first line\n\tsecond\r\n"), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    assert r.json()["runs"][0]["notes"] == "first line\n\tsecond\r\n"


@pytest.mark.parametrize(("path", "body", "loc"), [
    ("/api/v1/teams", '{"name": "\\ud800"}', ["body", "name"]),
    ("/api/v1/teams", '{"name": "t\\u001b[2J"}', ["body", "name"]),
    ("/api/v1/teams", '{"name": "ok", "weight": NaN}', ["body", "weight"]),
    ("/api/v1/teams", '{"name": "ok", "budget_gpu_hours": Infinity}', ["body", "budget_gpu_hours"]),
    ("/api/v1/users", '{"name": "\\ud800"}', ["body", "name"]),
    ("/api/v1/users", '{"name": "u", "email": "a\\u0000@b"}', ["body", "email"]),
    ("/api/v1/tokens", '{"name": "\\ud800"}', ["body", "name"]),
    ("/api/v1/tokens", '{"name": "ci \\u001b]8;;http://x\\u0007"}', ["body", "name"]),
    ("/api/v1/teams/team-a/members", '{"user": "\\ud800"}', ["body", "user"]),
], ids=["team-surrogate", "team-escape", "team-nan-weight", "team-inf-budget", "user-surrogate", "user-nul-email",
        "token-surrogate", "token-escape", "member-surrogate"])
def test_bad_account_bodies(client: TestClient, world, session: Session, path: str, body: str, loc: list) -> None:
    before = _stored(session)
    _error(client.post(path, content=body, headers={**world.h("root"), "Content-Type": "application/json"}), loc)
    assert _stored(session) == before


HUGE = "99999999999999999999"  # past 64 bits


@pytest.mark.parametrize(("method", "url", "loc", "limit"), [
    ("GET", f"{RUNS}/{HUGE}", ["path", "run_id"], ID_MAX),
    ("GET", f"{RUNS}/{ID_MAX + 1}", ["path", "run_id"], ID_MAX),  # past PostgreSQL's INTEGER
    ("GET", f"{RUNS}/{HUGE}/events", ["path", "run_id"], ID_MAX),
    ("GET", f"{RUNS}/{HUGE}/metrics", ["path", "run_id"], ID_MAX),
    ("GET", f"{RUNS}/{HUGE}/logs", ["path", "run_id"], ID_MAX),
    ("GET", f"{RUNS}/1/logs?offset={HUGE}", ["query", "offset"], 2**63 - 1),
    ("POST", f"{RUNS}/{HUGE}/cancel", ["path", "run_id"], ID_MAX),
    ("GET", f"{RUNS}/{HUGE}/artifacts", ["path", "run_id"], ID_MAX),
    ("GET", f"{RUNS}/{HUGE}/artifacts/model.int6.ptz", ["path", "run_id"], ID_MAX),
    ("DELETE", f"/api/v1/tokens/{HUGE}", ["path", "token_id"], ID_MAX),
    ("DELETE", f"/api/v1/tokens/{ID_MAX + 1}", ["path", "token_id"], ID_MAX),
])
def test_integers_past_the_database_are_a_422(client: TestClient, world, spec, session: Session, method, url, loc, limit) -> None:
    assert client.post(RUNS, json=spec(), headers=world.h("alice")).status_code == 201
    before = _stored(session)
    detail = _error(client.request(method, url, headers=world.h("alice")), loc)
    assert str(limit) in detail["msg"]
    assert _stored(session) == before


@pytest.mark.parametrize(("method", "url", "loc"), [
    ("GET", f"{RUNS}?team=a%00", ["query", "team"]),
    ("GET", f"{RUNS}?q=%00", ["query", "q"]),
    ("GET", "/api/v1/groups?team=%00", ["query", "team"]),
    ("GET", "/api/v1/leaderboard?track=%00", ["query", "track"]),
    ("GET", "/api/v1/groups/abcdef%00", ["path", "key"]),
    ("GET", "/api/v1/groups/abcdef/export?baseline=%00", ["query", "baseline"]),
    ("GET", f"{RUNS}/1/artifacts/a%00b", ["path", "name"]),
    ("POST", "/api/v1/teams/team-a%00/members", ["path", "name"]),
])
def test_nul_in_a_url_is_a_422(client: TestClient, world, method, url, loc) -> None:
    r = client.request(method, url, headers=world.h("aaron"), json={"user": "bob"} if method == "POST" else None)
    assert "NUL" in _error(r, loc)["msg"]


def _columns(run: dict) -> dict:
    """What is stored of a run: not the queue forecast, computed (from the clock) when read."""
    return {k: v for k, v in run.items() if k not in QUEUE_FIELDS}


def test_a_stored_run_is_intact_after_every_bad_request(client: TestClient, world, spec, session: Session) -> None:
    h = world.h("alice")
    created = client.post(RUNS, json=spec(seeds=[1, 2], notes="keep me"), headers=h)
    assert created.status_code == 201
    run_id = created.json()["runs"][0]["id"]
    before = _columns(client.get(f"{RUNS}/{run_id}", headers=h).json())
    events = client.get(f"{RUNS}/{run_id}/events", headers=h).json()
    counts = _stored(session)
    json_h = {**h, "Content-Type": "application/json"}
    for raw, *_ in [c[1:] for c in BAD_NUMBERS + BAD_TEXT]:
        assert client.post(RUNS, content=raw, headers=json_h).status_code == 422
    for url in (f"{RUNS}/{HUGE}", f"{RUNS}/{run_id}/logs?offset={HUGE}", f"{RUNS}?q=%00"):
        assert client.get(url, headers=h).status_code == 422
    assert client.post(f"{RUNS}/{HUGE}/cancel", headers=h).status_code == 422
    assert client.delete(f"/api/v1/tokens/{HUGE}", headers=h).status_code == 422
    assert _columns(client.get(f"{RUNS}/{run_id}", headers=h).json()) == before
    assert client.get(f"{RUNS}/{run_id}/events", headers=h).json() == events
    assert _stored(session) == counts


@pytest.mark.parametrize("run_id", [ID_MAX + 2, 2**63, -5, 0])
def test_a_cursor_past_the_database_is_a_422(client: TestClient, world, run_id: int) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(f"r{run_id}".encode()).decode().rstrip("=")
    r = client.get(RUNS, params={"cursor": cursor}, headers=world.h("alice"))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_every_integer_in_a_path_is_bounded(client: TestClient, world) -> None:
    """A sweep of the API's routes (its OpenAPI schema): no integer path parameter reaches the database past ID_MAX."""
    checked = 0
    for path, operations in client.app.openapi()["paths"].items():
        for method, op in operations.items():
            params = [p for p in op.get("parameters", []) if p["in"] == "path"]
            ints = [p["name"] for p in params if p["schema"].get("type") == "integer"]
            if not ints:
                continue
            url = path
            for p in params:
                url = url.replace("{%s}" % p["name"], str(ID_MAX + 1) if p["name"] in ints else "x")
            r = client.request(method.upper(), url, headers=world.h("root"))
            assert r.status_code == 422, (method, url, r.status_code)
            checked += 1
    assert checked >= 8
