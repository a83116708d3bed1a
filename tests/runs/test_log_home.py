"""A run's log has one home at a time (service.runs.logs): chunks while it runs, one file in the
artifact store once it has ended, with the same answers from GET /runs/{id}/logs either way."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.billing.quotas import team_storage
from service.core.models import Artifact, LogChunk, Run
from service.core.settings import Settings
from service.core.status import RunStatus
from service.core.storage import make_artifact_store
from service.runs.lifecycle import transition
from service.runs.logs import append_log, archive_ended_logs, archive_row, read_log, record_archive, whole_log, write_archive
from service.teams.tokens import authenticate
from worker.control.retention import retention_pass

RUNS = "/api/v1/runs"
LINES = ["step:1/9 train_loss:8.0\n", "step:2/9 train_loss:7.5 \u00e9\u2603\n", "x" * 700 + "\n"] + [f"line {i}\n" * 10 for i in range(40)]


def _ended_run_with_log(client: TestClient, world, spec, session: Session, to: RunStatus = RunStatus.SUCCEEDED) -> int:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    for text in LINES:
        append_log(session, run_id, text)
    session.commit()
    run = session.get_one(Run, run_id)
    session.refresh(run)
    for status in (RunStatus.PROVISIONING, RunStatus.RUNNING, to):
        transition(session, run, status, actor="worker")
    session.commit()
    return run_id


def _answers(client: TestClient, world, run_id: int) -> list[dict]:
    size = len("".join(LINES).encode())
    url, h = f"{RUNS}/{run_id}/logs", world.h("alice")
    return [client.get(url, params={"offset": o}, headers=h).json() for o in (0, 5, len(LINES[0].encode()), size - 3, size, size + 10)]


def _pages(session: Session, world, run_id: int, settings: Settings) -> list[tuple[int, int, bool]]:
    principal = authenticate(session, world.tokens["alice"])
    store = make_artifact_store(settings)
    offset, text, pages = 0, "", []
    for _ in range(200):
        piece = read_log(session, principal, run_id, offset, max_bytes=300, store=store)
        assert len(piece.data.encode()) < 300 + 720  # about a page: whole chunks / whole lines
        pages.append((piece.offset, piece.next_offset, piece.done))
        text += piece.data
        if piece.next_offset == offset:
            break
        offset = piece.next_offset
    assert text == "".join(LINES)
    return pages


def _archive(session: Session, settings: Settings, run_id: int) -> None:
    archived = write_archive(session, make_artifact_store(settings), run_id)
    assert archived is not None and record_archive(session, archived)
    session.commit()


def test_an_ended_runs_log_reads_the_same_from_its_archive(client: TestClient, world, spec, session: Session, settings: Settings) -> None:
    run_id = _ended_run_with_log(client, world, spec, session)
    before, pages_before = _answers(client, world, run_id), _pages(session, world, run_id, settings)
    assert before[0]["data"] == "".join(LINES) and before[0]["done"] is True and before[-1]["data"] == ""

    _archive(session, settings, run_id)
    assert session.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 0
    row = archive_row(session, run_id)
    assert row is not None and row.bytes == len("".join(LINES).encode()) and row.kind == "log"
    assert _answers(client, world, run_id) == before  # same data, next_offset and done at every offset
    assert [p[1] for p in _pages(session, world, run_id, settings)][-1] == pages_before[-1][1]
    assert whole_log(session, run_id, make_artifact_store(settings)) == "".join(LINES).encode()
    # The archive is the run's stdout.log: listed and downloaded like its other files.
    assert client.get(f"{RUNS}/{run_id}/artifacts/stdout.log", headers=world.h("alice")).content == "".join(LINES).encode()
    # Another team's caller still finds no run, and so no log.
    assert client.get(f"{RUNS}/{run_id}/logs", headers=world.h("bob")).status_code == 404


def test_a_crash_before_the_archive_is_recorded_leaves_the_log_readable(client: TestClient, world, spec, session: Session, settings: Settings) -> None:
    run_id = _ended_run_with_log(client, world, spec, session, RunStatus.FAILED)
    store = make_artifact_store(settings)
    assert write_archive(session, store, run_id) is not None
    session.rollback()  # the process died before its commit: the file is in the store, unrecorded
    assert _answers(client, world, run_id)[0]["data"] == "".join(LINES)  # the chunks are still the log
    # The janitor's sweep writes it again and records it, once: a second sweep finds nothing to do.
    assert archive_ended_logs(session, store) == 1 and archive_ended_logs(session, store) == 0
    assert _answers(client, world, run_id)[0] == {"offset": 0, "next_offset": len("".join(LINES).encode()), "data": "".join(LINES), "done": True}
    assert len([a for a in session.scalars(select(Artifact).where(Artifact.run_id == run_id))]) == 1


def test_an_archive_is_not_recorded_when_the_log_grew_since(client: TestClient, world, spec, session: Session, settings: Settings) -> None:
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    append_log(session, run_id, "first\n")
    session.commit()
    archived = write_archive(session, make_artifact_store(settings), run_id)
    append_log(session, run_id, "second\n")
    session.commit()
    assert archived is not None and not record_archive(session, archived)
    session.commit()
    assert session.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 2
    assert archive_row(session, run_id) is None
    # An active run is never swept.
    assert archive_ended_logs(session, make_artifact_store(settings)) == 0


def test_the_quota_counts_a_log_once_wherever_it_is(client: TestClient, world, spec, session: Session, settings: Settings) -> None:
    run_id = _ended_run_with_log(client, world, spec, session)
    size = len("".join(LINES).encode())
    team = world.team_ids["team-a"]
    assert (team_storage(session, team).artifacts, team_storage(session, team).logs) == (0, size)
    _archive(session, settings, run_id)
    assert (team_storage(session, team).artifacts, team_storage(session, team).logs) == (size, 0)


def test_retention_keeps_the_stored_log(client: TestClient, world, spec, session: Session, settings: Settings) -> None:
    run_id = _ended_run_with_log(client, world, spec, session)
    store = make_artifact_store(settings)
    ended = session.get_one(Run, run_id).finished_at
    assert ended is not None
    retention_pass(session, store=store, runs_dir=None, days=30, now=ended + timedelta(days=60))
    # The round archived the log first (no chunks left), then kept it past the retention.
    assert session.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 0
    assert archive_row(session, run_id) is not None
    assert client.get(f"{RUNS}/{run_id}/logs", headers=world.h("alice")).json()["data"] == "".join(LINES)


def test_a_log_archived_in_another_store_is_refused_by_the_api_and_the_run_page_still_opens(client: TestClient, world, spec, session: Session,  # noqa: ANN001
                                                                                              settings: Settings) -> None:  # fmt: skip
    # A database restored beside another store (found opening a GPU node's caddie.db here): its rows name the old one.
    run_id = _ended_run_with_log(client, world, spec, session, RunStatus.CANCELLED)
    _archive(session, settings, run_id)
    row = archive_row(session, run_id)
    assert row is not None
    row.uri = "file:///tmp/record-local-elsewhere/home/artifacts/runs/1/log/stdout.log"
    session.commit()
    r = client.get(f"{RUNS}/{run_id}/logs", headers=world.h("alice"))
    assert r.status_code == 410 and "not in this caddie's artifact store" in r.text and "record-local-elsewhere" not in r.text
    client.post("/signin", data={"token": world.tokens["alice"], "next": "/runs"}, follow_redirects=False)
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and "not in this caddie&#39;s artifact store" in page.text and "record-local-elsewhere" not in page.text
