"""POST/GET /runs and a run's cancel, events, metrics and log, through the real app."""

from __future__ import annotations

import os
import threading
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db import get_sessionmaker
from service.core.models import LogChunk, Metric, Run, RunEvent
from service.core.status import RunStatus
from service.runs.lifecycle import transition
from service.runs.logs import append_log, read_log
from service.runs.schemas import RunCreate
from service.runs.submit import submit_runs
from service.teams.tokens import authenticate

RUNS = "/api/v1/runs"


def _count(session: Session, model: type = Run) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model))


def test_submit_makes_one_queued_run_per_seed_in_one_group(client: TestClient, world, spec, session: Session) -> None:
    r = client.post(RUNS, json=spec(seeds=[1337, 42, 2025], notes="try 9 layers"), headers=world.h("alice"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert [run["seed"] for run in body["runs"]] == [1337, 42, 2025]
    assert {run["group_key"] for run in body["runs"]} == {body["group_key"]}
    first = body["runs"][0]
    assert first["status"] == "QUEUED" and first["team"] == "team-a" and first["user"] == "alice"
    assert first["spec"] == {"NUM_LAYERS": 9, "STACK": "2026-03-23"} and first["attempts"] == 0 and first["notes"] == "try 9 layers"
    assert first["submitted_at"].endswith("Z") or "+00:00" in first["submitted_at"]
    assert _count(session) == 3
    events = list(session.scalars(select(RunEvent)))
    assert {(e.from_status, e.to_status, e.actor) for e in events} == {(None, "QUEUED", "user:alice")}


def test_spec_is_normalised_and_group_key_ignores_name_notes_seed(client: TestClient, world, spec) -> None:
    h = world.h("alice")
    a = client.post(RUNS, json=spec(config={"NUM_LAYERS": 9, "MLP_MULT": 3, "num_heads": 8, "MATRIX_LR": "0.02"}, seeds=[1]), headers=h).json()
    b = client.post(RUNS, json=spec(name="other", notes="x", config={"matrix_lr": 0.02, "NUM_LAYERS": "9"}, seeds=[7]), headers=h).json()
    # The seed stack's defaults (MLP_MULT=3, NUM_HEADS=8) drop out; spellings and types become canonical; keys
    # sorted; STACK stays (the spec fixture's 2026-03-23 is not the default stack).
    assert a["runs"][0]["spec"] == {"MATRIX_LR": 0.02, "NUM_LAYERS": 9, "STACK": "2026-03-23"}
    assert list(a["runs"][0]["spec"]) == ["MATRIX_LR", "NUM_LAYERS", "STACK"]
    assert a["group_key"] == b["group_key"] and len(a["group_key"]) == 64
    other_track = client.post(RUNS, json=spec(config={"NUM_LAYERS": 9, "MATRIX_LR": 0.02}, track="unlimited"), headers=h).json()
    other_hw = client.post(RUNS, json=spec(config={"NUM_LAYERS": 9, "MATRIX_LR": 0.02}, hardware="H100:1"), headers=h).json()
    other_cfg = client.post(RUNS, json=spec(config={"NUM_LAYERS": 10, "MATRIX_LR": 0.02}), headers=h).json()
    assert len({a["group_key"], other_track["group_key"], other_hw["group_key"], other_cfg["group_key"]}) == 4


def test_single_seed_and_default_seed(client: TestClient, world, spec) -> None:
    h = world.h("alice")
    body = spec()
    del body["seeds"]
    assert [r["seed"] for r in client.post(RUNS, json=body, headers=h).json()["runs"]] == [1337]
    body["seed"] = 7
    assert [r["seed"] for r in client.post(RUNS, json=body, headers=h).json()["runs"]] == [7]


def test_team_must_be_named_when_in_several(client: TestClient, world, spec, session: Session) -> None:
    from service.teams import accounts

    accounts.add_member(session, "team-b", "alice")
    session.commit()
    r = client.post(RUNS, json=spec(), headers=world.h("alice"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "team"]
    r = client.post(RUNS, json=spec(team="team-b"), headers=world.h("alice"))
    assert r.status_code == 201 and r.json()["runs"][0]["team"] == "team-b"
    # Not a member of the team named: refused, and the team's existence is not confirmed.
    r = client.post(RUNS, json=spec(team="team-a"), headers=world.h("bob"))
    assert r.status_code == 422 and "no such team" in r.json()["detail"][0]["msg"]
    # Admins submit for any team.
    assert client.post(RUNS, json=spec(team="team-b"), headers=world.h("root")).status_code == 201


def test_shell_metacharacters_in_free_text_are_stored_verbatim_and_run_nothing(client: TestClient, world, spec) -> None:
    marker = f"/tmp/pwned_{uuid.uuid4().hex}"
    name = f"$(touch {marker})"
    notes = f"`touch {marker}`; touch {marker} && echo '$HOME' \"; rm -rf /\" \n\t\u00e9\u2603"
    r = client.post(RUNS, json=spec(name=name, notes=notes), headers=world.h("alice"))
    assert r.status_code == 201
    run_id = r.json()["runs"][0]["id"]
    got = client.get(f"{RUNS}/{run_id}", headers=world.h("alice")).json()
    assert got["name"] == name and got["notes"] == notes
    listed = client.get(RUNS, params={"q": "touch"}, headers=world.h("alice")).json()["items"]
    assert [x["name"] for x in listed] == [name]
    assert not os.path.exists(marker)


def test_idempotency_key_returns_the_same_runs(client: TestClient, world, spec, session: Session) -> None:
    h = {**world.h("alice"), "Idempotency-Key": "submit-1"}
    first = client.post(RUNS, json=spec(seeds=[1, 2, 3]), headers=h)
    again = client.post(RUNS, json=spec(seeds=[1, 2, 3]), headers=h)
    assert first.status_code == again.status_code == 201
    assert [r["id"] for r in again.json()["runs"]] == [r["id"] for r in first.json()["runs"]]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert _count(session) == 3
    # A different key is a different submission.
    other = client.post(RUNS, json=spec(seeds=[1, 2, 3]), headers={**world.h("alice"), "Idempotency-Key": "submit-2"})
    assert other.status_code == 201 and _count(session) == 6
    # Without a key, every POST makes runs.
    client.post(RUNS, json=spec(seeds=[1, 2, 3]), headers=world.h("alice"))
    assert _count(session) == 9
    # Keys belong to a user: bob's "submit-1" is his own.
    assert client.post(RUNS, json=spec(), headers={**world.h("bob"), "Idempotency-Key": "submit-1"}).status_code == 201
    assert _count(session) == 10


def test_idempotency_key_reused_for_another_spec_is_a_conflict(client: TestClient, world, spec, session: Session) -> None:
    h = {**world.h("alice"), "Idempotency-Key": "k"}
    assert client.post(RUNS, json=spec(seeds=[1]), headers=h).status_code == 201
    r = client.post(RUNS, json=spec(seeds=[1], config={"NUM_LAYERS": 10}), headers=h)
    assert r.status_code == 409 and "Idempotency-Key" in r.json()["detail"][0]["msg"]
    assert _count(session) == 1


def test_concurrent_retries_with_one_key_make_one_set_of_runs(world, db_url: str, settings, session: Session, spec) -> None:
    maker = get_sessionmaker(db_url)
    body = RunCreate.model_validate(spec(seeds=[1, 2, 3, 4]))
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        s = maker()
        try:
            principal = authenticate(s, world.tokens["alice"])
            barrier.wait()
            _, runs, _ = submit_runs(s, principal, body, settings, idempotency_key="same")
            results.append(sorted(r.id for r in runs))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 6 and all(r == results[0] for r in results)
    assert _count(session) == 4 and _count(session, RunEvent) == 4


def test_cancel_queued_run_is_immediate(client: TestClient, world, spec) -> None:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED" and r.json()["finished_at"]
    events = client.get(f"{RUNS}/{run_id}/events", headers=world.h("alice")).json()
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in events] == [(None, "QUEUED", "user:alice"), ("QUEUED", "CANCELLED", "user:alice")]
    # Finished runs cannot be cancelled again.
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
    assert r.status_code == 409 and "CANCELLED" in r.json()["detail"][0]["msg"]


def test_cancel_running_run_records_a_request_for_the_worker(client: TestClient, world, spec, session: Session) -> None:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    run = session.get_one(Run, run_id)
    transition(session, run, RunStatus.PROVISIONING, actor="scheduler")
    transition(session, run, RunStatus.RUNNING, actor="worker")
    session.commit()
    r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("aaron"))
    assert r.status_code == 200
    assert r.json()["status"] == "RUNNING" and r.json()["cancel_requested_at"]
    first_request = r.json()["cancel_requested_at"]
    assert client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice")).json()["cancel_requested_at"] == first_request
    # The worker honours it with the final transition.
    session.expire_all()
    run = session.get_one(Run, run_id)
    assert run.cancel_requested_at is not None
    transition(session, run, RunStatus.CANCELLED, actor="worker", reason="cancel requested")
    session.commit()
    assert client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice")).status_code == 409


def test_finished_runs_cannot_be_cancelled(client: TestClient, world, spec, session: Session) -> None:
    for final in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
        run = session.get_one(Run, run_id)
        transition(session, run, RunStatus.PROVISIONING, actor="scheduler")
        transition(session, run, RunStatus.RUNNING, actor="worker")
        transition(session, run, final, actor="worker")
        session.commit()
        r = client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice"))
        assert r.status_code == 409 and final.value in r.json()["detail"][0]["msg"]


def _append_log(session: Session, run_id: int, texts: list[str]) -> None:
    for text in texts:
        append_log(session, run_id, text)  # the worker's own writer (worker.run.log_stream)
    session.commit()
    run = session.get_one(Run, run_id)
    session.refresh(run)
    offsets = list(session.scalars(select(LogChunk.offset).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)))
    assert offsets[0] == 0 and run.log_bytes == sum(len(t.encode()) for t in texts)


def test_logs_from_a_byte_offset(client: TestClient, world, spec, session: Session) -> None:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    url = f"{RUNS}/{run_id}/logs"
    h = world.h("alice")
    assert client.get(url, headers=h).json() == {"offset": 0, "next_offset": 0, "data": "", "done": False}
    lines = ["step:1/9 train_loss:8.0\n", "step:2/9 train_loss:7.5 \u00e9\u2603\n", "step:3/9 train_loss:7.1\n"]
    _append_log(session, run_id, lines)
    whole = "".join(lines)
    size = len(whole.encode())
    r = client.get(url, headers=h).json()
    assert r == {"offset": 0, "next_offset": size, "data": whole, "done": False}
    # From the middle of the first chunk, and from a chunk boundary.
    r = client.get(url, params={"offset": 5}, headers=h).json()
    assert r["data"] == whole.encode()[5:].decode() and r["next_offset"] == size
    boundary = len(lines[0].encode())
    assert client.get(url, params={"offset": boundary}, headers=h).json()["data"] == "".join(lines[1:])
    # Caught up: nothing new, same offset back.
    assert client.get(url, params={"offset": size}, headers=h).json() == {"offset": size, "next_offset": size, "data": "", "done": False}
    # Terminal and caught up: done.
    run = session.get_one(Run, run_id)
    transition(session, run, RunStatus.FAILED, actor="worker")
    session.commit()
    assert client.get(url, params={"offset": size}, headers=h).json()["done"] is True
    assert client.get(url, params={"offset": 0}, headers=h).json()["done"] is True
    assert client.get(url, params={"offset": -1}, headers=h).status_code == 422


def test_log_pages_are_bounded_and_chain(world, session: Session, client: TestClient, spec) -> None:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    _append_log(session, run_id, [f"line {i}\n" * 10 for i in range(50)])
    principal = authenticate(session, world.tokens["alice"])
    offset, text = 0, ""
    for _ in range(100):
        piece = read_log(session, principal, run_id, offset, max_bytes=300)
        if piece.next_offset == offset:
            break
        assert len(piece.data.encode()) < 300 + 80
        text += piece.data
        offset = piece.next_offset
    assert text == "".join(f"line {i}\n" * 10 for i in range(50))


def test_events_and_metrics(client: TestClient, world, spec, session: Session) -> None:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    session.add_all(
        [
            Metric(run_id=run_id, kind="val", step=4000, val_loss=2.05, val_bpb=1.21, elapsed_ms=333519),
            Metric(run_id=run_id, kind="train", step=2, train_loss=8.65, elapsed_ms=166),
        ]
    )
    session.commit()
    metrics = client.get(f"{RUNS}/{run_id}/metrics", headers=world.h("alice")).json()
    assert [(m["kind"], m["step"]) for m in metrics] == [("train", 2), ("val", 4000)]
    assert metrics[1]["val_bpb"] == 1.21 and metrics[0]["val_bpb"] is None
    assert len(client.get(f"{RUNS}/{run_id}/events", headers=world.h("alice")).json()) == 1


def test_config_schema_and_health(client: TestClient) -> None:
    schema = client.get("/api/v1/config/schema").json()
    assert schema["properties"]["NUM_LAYERS"]["default"] == 11
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/api/v1/runs" in client.get("/openapi.json").json()["paths"]
