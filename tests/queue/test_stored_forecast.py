"""The queue forecast computed by the control worker and stored (issue 23): every API replica
answers from it and none computes it while it is fresh; without a fresh one an API computes
it itself, saying so. On PostgreSQL and SQLite."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.db import get_sessionmaker
from service.core.models import utcnow
from service.core.settings import Settings
from service.queue import stored
from worker.celery_app import FORECAST_TICK, celery_config
from worker.control.forecast import refresh_forecast, refresh_forecast_niced


def submit(client: TestClient, world, spec, who: str, seeds: list[int]) -> list[int]:  # noqa: ANN001
    r = client.post("/api/v1/runs", json=spec(seeds=seeds), headers=world.h(who))
    assert r.status_code == 201, r.text
    return [run["id"] for run in r.json()["runs"]]


@contextmanager
def api(db_url: str, tmp_path, **over: object) -> Iterator[TestClient]:  # noqa: ANN001
    # TTL 0: an API computing the forecast itself would do so on every request, so an answer
    # that lags a change can only come from the stored forecast.
    settings = Settings(home=tmp_path / "home", database_url=db_url, queue_forecast_ttl_s=0, **over)
    with TestClient(create_app(settings)) as client:
        yield client


def refresh(db_url: str, now=None) -> int:  # noqa: ANN001
    with get_sessionmaker(db_url)() as session:
        return refresh_forecast(session, Settings(database_url=db_url), now=now)


def position(client: TestClient, world, run_id: int) -> dict:  # noqa: ANN001
    run = client.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
    return {k: run[k] for k in ("queue_position", "estimated_start_at", "waiting_reason")}


def test_every_api_replica_answers_from_the_forecast_the_worker_stored(world, spec, db_url, tmp_path) -> None:  # noqa: ANN001
    with api(db_url, tmp_path) as one, api(db_url, tmp_path) as two:
        a = submit(one, world, spec, "alice", [1, 2])
        assert refresh(db_url) == 2
        before = position(one, world, a[1])
        assert before["queue_position"] == 2 and position(two, world, a[1]) == before
        # A budget change is not seen until the worker's next forecast: no API computes it.
        one.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 0}, headers=world.h("root"))
        assert position(one, world, a[1]) == before and position(two, world, a[1]) == before
        listed = {r["id"]: r["queue_position"] for r in two.get("/api/v1/runs", headers=world.h("alice")).json()["items"]}
        assert listed == {a[0]: 1, a[1]: 2}
        assert [item["queue_position"] for item in one.get("/api/v1/queue", headers=world.h("alice")).json()] == [1, 2]
        refresh(db_url)
        after = position(two, world, a[1])
        assert after["queue_position"] is None and "over its budget" in after["waiting_reason"]
        assert position(one, world, a[1]) == after


def test_the_queue_pages_in_the_stored_forecasts_order(world, spec, db_url, tmp_path) -> None:  # noqa: ANN001
    with api(db_url, tmp_path) as client:
        a = submit(client, world, spec, "alice", [1, 2])
        b = submit(client, world, spec, "bob", [3])
        refresh(db_url)
        page = lambda q, who="root": [i["id"] for i in client.get(f"/api/v1/queue?{q}", headers=world.h(who)).json()]  # noqa: E731
        assert page("") == [a[0], b[0], a[1]]  # fair share alternates the teams
        assert page("limit=2") == [a[0], b[0]] and page("limit=2&offset=2") == [a[1]] and page("offset=3") == []
        assert page("", "alice") == [a[0], a[1]] and page("", "bob") == [b[0]]


def test_a_run_the_stored_forecast_lacks_still_shows_an_estimate(world, spec, db_url, tmp_path) -> None:  # noqa: ANN001
    with api(db_url, tmp_path) as client:
        refresh(db_url)  # an empty queue: still a fresh forecast
        a = submit(client, world, spec, "alice", [1])
        # A short queue: the API forecasts the new run itself.
        assert position(client, world, a[0])["queue_position"] == 1
    with api(db_url, tmp_path, queue_forecast_inline_max=0) as client:
        # A queue too long to forecast here: the run says when its place comes, nothing is computed.
        new = position(client, world, a[0])
        assert new["queue_position"] is None and "queued after the latest queue forecast" in new["waiting_reason"]
        queued = client.get("/api/v1/queue", headers=world.h("alice")).json()
        assert [(i["id"], i["queue_position"]) for i in queued] == [(a[0], None)]
        refresh(db_url)
        assert position(client, world, a[0])["queue_position"] == 1


def test_without_a_fresh_stored_forecast_the_api_computes_it_and_says_so(world, spec, db_url, tmp_path, caplog) -> None:  # noqa: ANN001
    from service.queue import positions

    with api(db_url, tmp_path) as client:
        a = submit(client, world, spec, "alice", [1])
        refresh(db_url, now=utcnow() - timedelta(minutes=5))  # the worker stopped 5 minutes ago
        client.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 0}, headers=world.h("root"))
        positions._last_said[0] = float("-inf")
        with caplog.at_level(logging.WARNING, logger="service.queue.positions"):
            run = position(client, world, a[0])
        assert run["queue_position"] is None and "over its budget" in run["waiting_reason"]  # computed now, not the stale one
        assert "computes it itself" in caplog.text and "is the control worker's beat running?" in caplog.text


def test_the_stored_forecast_is_replaced_as_a_whole(world, spec, session: Session, db_url, tmp_path) -> None:  # noqa: ANN001
    with api(db_url, tmp_path) as client:
        a = submit(client, world, spec, "alice", [1, 2])
        refresh(db_url)
        client.post(f"/api/v1/runs/{a[0]}/cancel", headers=world.h("alice"))
        refresh(db_url)
    forecast = stored.read_forecast(session, every=True)
    assert forecast is not None and forecast.size == 1 and set(forecast.estimates) == {a[1]}
    assert forecast.estimates[a[1]].position == 1


def test_opening_a_queued_run_costs_the_queries_of_any_other_run(world, spec, db_url, tmp_path) -> None:  # noqa: ANN001
    """A live run page polls GET /runs/{id} every 2 s: a queued run's estimate comes in the query
    that reads the run, so it costs what a finished run costs (the token's query and that one);
    a list page's estimates come in the page's query."""
    with api(db_url, tmp_path) as client:
        a = submit(client, world, spec, "alice", [1, 2])
        client.post(f"/api/v1/runs/{a[0]}/cancel", headers=world.h("alice"))
        refresh(db_url)
        engine = client.app.state.sessionmaker.kw["bind"]  # type: ignore[attr-defined]
        statements: list[str] = []

        def count(conn, cursor, statement, *rest) -> None:  # noqa: ANN001, ANN002
            statements.append(statement)

        position(client, world, a[1])  # the token's last_used_at is written once, not counted
        event.listen(engine, "before_cursor_execute", count)
        try:
            queued = position(client, world, a[1])
            on_queued, statements[:] = len(statements), []
            cancelled = position(client, world, a[0])
            on_cancelled, statements[:] = len(statements), []
            listed = client.get("/api/v1/runs", headers=world.h("alice")).json()["items"]
            on_list = len(statements)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert queued["queue_position"] == 1 and queued["waiting_reason"] is not None
    assert cancelled == {"queue_position": None, "estimated_start_at": None, "waiting_reason": None}
    # A queued run costs no more than any other: its estimate comes in the run's own query. A run that
    # has ended also reads its events once, for its attempts (GET /runs/{id}'s attempt_history).
    assert on_queued == 2 and on_cancelled == 3
    # A page of runs with a queued one: its estimate comes with the page, in the same query.
    assert {r["id"]: r["queue_position"] for r in listed} == {a[1]: 1, a[0]: None} and on_list == 2


def test_beat_sends_the_forecast_tick_on_the_control_queue() -> None:
    config = celery_config(Settings(queue_forecast_interval_s=7))
    tick = config["beat_schedule"]["forecast-tick"]
    assert tick["task"] == FORECAST_TICK and tick["schedule"] == 7 and tick["options"]["expires"] == 7
    assert config["task_routes"][FORECAST_TICK] == {"queue": "control"}


def test_a_long_queue_with_a_stale_forecast_is_answered_from_it_not_forecast_on_a_request(world, spec, db_url, tmp_path, caplog) -> None:  # noqa: ANN001
    """The control worker stopped: a queue longer than CADDIE_QUEUE_FORECAST_INLINE_MAX is answered from the stale
    stored forecast, however old, by a run's page and a run list as by GET /queue; a run it lacks says when its
    place comes. Nothing is computed on the request (a budget change since is not seen, as with the stale one)."""
    from service.queue import positions

    with api(db_url, tmp_path, queue_forecast_inline_max=1) as client:
        a = submit(client, world, spec, "alice", [1, 2])
        refresh(db_url, now=utcnow() - timedelta(minutes=5))  # the worker stopped 5 minutes ago
        late = submit(client, world, spec, "alice", [3])[0]  # queued since
        client.patch("/api/v1/teams/team-a", json={"budget_gpu_hours": 0}, headers=world.h("root"))
        positions._last_said[0] = float("-inf")
        with caplog.at_level(logging.WARNING, logger="service.queue.positions"):
            assert position(client, world, a[1])["queue_position"] == 2  # the stale figure, not "over its budget"
        assert "a queue this long is not forecast on a request" in caplog.text
        new = position(client, world, late)
        assert new["queue_position"] is None and "queued after the latest queue forecast" in new["waiting_reason"]
        listed = {r["id"]: r["queue_position"] for r in client.get("/api/v1/runs", headers=world.h("alice")).json()["items"]}
        assert listed == {a[0]: 1, a[1]: 2, late: None}


def _table(session: Session) -> dict[int, tuple]:
    from sqlalchemy import select

    from service.core.models import StoredQueueEstimate as E

    return {r[0]: tuple(r[1:]) for r in session.execute(select(E.run_id, E.position, E.estimated_start_at, E.reason, E.rank, E.team_id))}


def test_a_forecast_rewrites_only_the_rows_that_changed_and_reads_as_if_all_were_rewritten(session: Session, db_url) -> None:  # noqa: ANN001
    from service.queue.forecast import QueueEstimate

    t0 = utcnow().replace(microsecond=0)
    at = lambda minutes: t0 + timedelta(minutes=minutes)  # noqa: E731
    first = {i: QueueEstimate(i, i, at(30 * i), f"waiting {i}") for i in range(1, 7)}
    teams = {i: 1 + i % 2 for i in range(1, 7)}
    assert stored.store_forecast(session, first, made_at=t0, teams=teams) == 6
    assert stored.store_forecast(session, first, made_at=at(1), teams=teams) == 0  # nothing moved: only the marker
    assert stored.read_forecast(session, [3]).made_at == at(1)  # the forecast's time is the new one's
    # run 6 was cancelled (gone), run 4's reason changed, run 9 is new (last): only 4 and 9 are written, 6 is removed.
    second = {i: e for i, e in first.items() if i != 6} | {4: QueueEstimate(4, 4, at(120), "over its budget"), 9: QueueEstimate(9, None, None, "no slot")}
    teams2 = {**teams, 9: 2}
    assert stored.store_forecast(session, second, made_at=at(2), teams=teams2) == 2
    kept = _table(session)
    # The same forecast written from an empty table: the same rows.
    session.execute(stored.delete(stored.StoredQueueEstimate))
    session.commit()
    assert stored.store_forecast(session, second, made_at=at(2), teams=teams2) == 6
    assert _table(session) == kept
    got = stored.read_forecast(session, every=True)
    assert got is not None and got.size == 6 and set(got.estimates) == {1, 2, 3, 4, 5, 9} and got.estimates[4].reason == "over its budget"
    # The head started: every later run moves up a rank and a place, so all are written (one delete, one bulk write).
    third = {i: QueueEstimate(i, i + 1, at(30 * i + 7), "shifted") for i in range(2, 40)}
    assert stored.store_forecast(session, third, made_at=at(3), teams={}) == 38
    assert set(_table(session)) == {0, *range(2, 40)}


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
def test_the_worker_forecasts_in_a_nicer_thread_and_keeps_its_own_priority(world, spec, db_url, tmp_path) -> None:  # noqa: ANN001
    with api(db_url, tmp_path) as client:
        submit(client, world, spec, "alice", [1, 2])
    me = threading.get_native_id()
    mine = os.getpriority(os.PRIO_PROCESS, me)
    seen: list[tuple[int, int]] = []
    maker = get_sessionmaker(db_url)

    def make_session() -> Session:  # called where the forecast runs: its thread and niceness, observed
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return maker()

    assert refresh_forecast_niced(make_session, Settings(database_url=db_url, queue_forecast_nice=5)) == 2
    [(tid, nice)] = seen
    assert tid != me and nice == min(19, mine + 5)
    assert os.getpriority(os.PRIO_PROCESS, me) == mine  # the worker's other ticks keep their priority
    with get_sessionmaker(db_url)() as session:
        forecast = stored.read_forecast(session, every=True)
        assert forecast is not None and len(forecast.estimates) == 2

    def broken() -> Session:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):  # a failed forecast fails the tick, as before
        refresh_forecast_niced(broken, Settings(database_url=db_url))
