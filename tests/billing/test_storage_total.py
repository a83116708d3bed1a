"""The storage quota's running total (service.billing.storage) equals the full recount
(service.billing.quotas.team_storage) after every store and deletion, on both databases;
concurrent writers lose no update; a write that bypassed it is repaired by the janitor's
recount; the migration backfills it."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from service.billing.quotas import team_storage
from service.billing.storage import counted, recount_stalest, stored_bytes
from service.core.db import get_sessionmaker
from service.core.migrate import upgrade
from service.core.models import Artifact, Run, utcnow
from service.core.settings import Settings
from service.core.status import RunStatus
from service.core.storage import make_artifact_store
from service.runs.lifecycle import transition
from service.runs.logs import append_log, archive_ended_logs, record_archive, write_archive
from tests.fresh_db import empty_database
from worker.control.retention import retention_pass

RUNS = "/api/v1/runs"
SCRIPT = b"print('val_bpb:1.0')\n" * 7
HELPER = b"X = 1\n" * 5


def _same(session: Session, *teams: int) -> None:
    session.expire_all()
    for team in teams:
        assert stored_bytes(session, team) == team_storage(session, team).total, f"team {team}"


def _collect(session: Session, run_id: int, sizes: list[int]) -> None:
    """What the executor's collect does: replace the run's artifacts, inside ``counted``."""
    with counted(session, run_id):
        session.execute(delete(Artifact).where(Artifact.run_id == run_id))
        session.add_all(Artifact(run_id=run_id, kind="model", uri=f"file:///runs/{run_id}/model/m{i}", bytes=n, created_at=utcnow()) for i, n in enumerate(sizes))
    session.commit()


def _end(session: Session, run_id: int, to: RunStatus = RunStatus.SUCCEEDED) -> None:
    run = session.get_one(Run, run_id)
    session.refresh(run)
    for status in (RunStatus.PROVISIONING, RunStatus.RUNNING, to):
        transition(session, run, status, actor="worker")
    session.commit()


def test_the_running_total_equals_a_recount_after_stores_and_deletions(client: TestClient, world, spec, session: Session, settings: Settings) -> None:  # noqa: ANN001
    a, b = world.team_ids["team-a"], world.team_ids["team-b"]
    script = {"name": "s", "track": "unlimited", "hardware": "cpu", "seeds": [1, 2], "script": base64.b64encode(SCRIPT).decode(), "data": "sp1024",
              "files": [{"name": "helper.py", "content": base64.b64encode(HELPER).decode()}]}  # fmt: skip
    r = client.post(RUNS, json=script, headers=world.h("alice"))
    assert r.status_code == 201, r.text
    s1, s2 = (x["id"] for x in r.json()["runs"])
    assert client.post(RUNS, json=script, headers=world.h("bob")).status_code == 201  # the same files, named by team B too
    t1 = client.post(RUNS, json=spec(name="t"), headers=world.h("alice")).json()["runs"][0]["id"]
    _same(session, a, b)
    assert stored_bytes(session, a) == len(SCRIPT) + len(HELPER)  # each file once, though two runs name them

    # Logs: chunks, a capped log (log_bytes runs on past the cap), a requeue note after a gap.
    append_log(session, t1, "step:1 train_loss:8\n")
    append_log(session, s1, "hello\n" * 30)
    session.commit()
    _same(session, a, b)
    append_log(session, t1, "step:2 train_loss:7\n", log_truncated_at=25)
    append_log(session, t1, "", log_end=400)  # read past the cap: counted up to the cap only
    session.commit()
    _same(session, a, b)
    append_log(session, t1, "requeued\n", attempt=2, offset=400)
    session.commit()
    _same(session, a, b)

    # Artifacts registered, then a second collect replacing them.
    _collect(session, t1, [1000, 234])
    _collect(session, s1, [50])
    _same(session, a, b)
    _collect(session, t1, [777])
    _same(session, a, b)

    # The run ends: its log becomes one file (chunks out, file in), then the janitor's sweep does the rest.
    _end(session, t1)
    _end(session, s1, RunStatus.FAILED)
    store = make_artifact_store(settings)
    archived = write_archive(session, store, t1)
    assert archived is not None and record_archive(session, archived)
    session.commit()
    _same(session, a, b)
    assert archive_ended_logs(session, store) == 1  # s1's log
    _same(session, a, b)

    # Retention: ended runs' artifacts go (the stored log stays); script files no wanted run names go.
    _end(session, s2, RunStatus.CANCELLED)
    session.execute(text("UPDATE runs SET finished_at = :t"), {"t": utcnow() - timedelta(days=90)})
    session.execute(text("UPDATE script_files SET created_at = :t"), {"t": utcnow() - timedelta(days=90)})
    session.commit()
    kept = stored_bytes(session, a)
    assert retention_pass(session, store=store, runs_dir=None, days=30, now=utcnow()) > 0
    _same(session, a, b)
    assert stored_bytes(session, a) < kept and stored_bytes(session, b) == 0  # B's runs held only the scripts


def test_a_write_that_bypassed_the_total_is_repaired_by_the_janitors_recount(client: TestClient, world, spec, session: Session) -> None:  # noqa: ANN001
    a = world.team_ids["team-a"]
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    _collect(session, run_id, [100])
    session.add(Artifact(run_id=run_id, kind="model", uri="file:///by-hand", bytes=5_000, created_at=utcnow()))  # no counted(): drift
    session.commit()
    assert stored_bytes(session, a) == 100 and team_storage(session, a).total == 5_100
    assert recount_stalest(session, teams=10) == 5_000
    _same(session, a)
    assert recount_stalest(session, teams=10) == 0  # nothing left to repair


def test_concurrent_writers_lose_no_update(client: TestClient, world, spec, session: Session, db_url: str) -> None:  # noqa: ANN001
    a = world.team_ids["team-a"]
    ids = [r["id"] for r in client.post(RUNS, json=spec(seeds=[1, 2, 3, 4]), headers=world.h("alice")).json()["runs"]]
    make = get_sessionmaker(db_url)
    errors: list[BaseException] = []

    def write(run_id: int) -> None:
        try:
            with make() as s:
                for i in range(15):
                    append_log(s, run_id, f"line {i}\n")
                    s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(run_id,)) for run_id in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _same(session, a)
    assert stored_bytes(session, a) == 4 * sum(len(f"line {i}\n") for i in range(15))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'backfill.db'}"
        return
    with empty_database() as url:
        yield url


def test_the_migration_backfills_the_total_with_the_recount(fresh_url: str) -> None:
    upgrade(fresh_url, "0013")
    make = get_sessionmaker(fresh_url)
    now = utcnow()
    with make() as s:
        s.execute(text("INSERT INTO teams (id, name, weight, created_at) VALUES (1, 'a', 1, :t), (2, 'b', 1, :t)"), {"t": now})
        s.execute(text("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'u', false, :t)"), {"t": now})
        for run_id, team, log_bytes, cut in [(1, 1, 300, None), (2, 1, 900, 100), (3, 2, 50, None), (4, 1, 70, None)]:
            s.execute(text("INSERT INTO runs (id, team_id, user_id, name, notes, kind, spec, seed, group_key, track, hardware, priority, status, "
                           "status_reason, attempts, submitted_at, log_bytes, log_truncated_at, allow_noncompliant) VALUES (:id, :team, 1, 'r', '', "
                           "'trainer', '{}', 1, 'g', 'unlimited', 'cpu', 0, 'SUCCEEDED', '', 0, :t, :lb, :cut, false)"),
                      {"id": run_id, "team": team, "t": now, "lb": log_bytes, "cut": cut})  # fmt: skip
        for run_id, uri, n in [(1, "file:///runs/1/model/m", 1000), (3, "file:///runs/3/model/m", 20), (4, "file:///runs/4/log/stdout.log", 70)]:
            s.execute(text("INSERT INTO artifacts (run_id, kind, uri, bytes, created_at) VALUES (:r, :k, :u, :n, :t)"),
                      {"r": run_id, "k": "log" if uri.endswith("stdout.log") else "model", "u": uri, "n": n, "t": now})  # fmt: skip
        s.execute(text("INSERT INTO script_files (sha256, bytes, content, created_at) VALUES ('s1', 11, :c, :t), ('s2', 4, :d, :t)"),
                  {"c": b"x" * 11, "d": b"y" * 4, "t": now})  # fmt: skip
        s.execute(text("INSERT INTO run_groups (key, team_id, name, track, hardware, kind, config, allow_noncompliant, created_at) VALUES "
                       "('k1', 1, 'g', 'unlimited', 'cpu', 'script', :c, false, :t)"),
                  {"c": '{"script": "s1", "files": {"h.py": "s2"}}', "t": now})  # fmt: skip
        s.commit()
    upgrade(fresh_url)
    with make() as s:
        assert [stored_bytes(s, t) for t in (1, 2)] == [team_storage(s, t).total for t in (1, 2)] == [1000 + 300 + 100 + 70 + 15, 20 + 50]
