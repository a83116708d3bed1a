"""GET /queue pages a 100,000-run queue from the stored forecast (issue 23 item 5): a page reads
its rows of the rank index and their runs by primary key, whatever the queue's length; paging
by cursor lists every queued run exactly once; a member sees only its team's runs. A stale
stored forecast still answers, saying how old it is. On PostgreSQL and SQLite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert, text, update
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.models import Run, StoredQueueEstimate, utcnow
from service.core.settings import Settings
from service.core.status import RunStatus
from service.queue import stored
from service.queue.forecast import QueueEstimate

QUEUED = 100_000
NEW = 5  # queued after the forecast was made: no stored row
STARTED = 3  # in the forecast, running since


@pytest.fixture
def big_queue(world, session: Session, backend: str) -> dict:  # noqa: ANN001
    """100,000 queued runs, two thirds team-a's; a stored forecast of all but the NEW newest,
    STARTED of whose runs have started since. Returns the order GET /queue must list them in."""
    now = utcnow()
    teams = [world.team_ids["team-a"], world.team_ids["team-a"], world.team_ids["team-b"]]
    user = {world.team_ids["team-a"]: world.user_ids["alice"], world.team_ids["team-b"]: world.user_ids["bob"]}
    rows = [{"team_id": teams[i % 3], "user_id": user[teams[i % 3]], "name": f"r{i}", "spec": {}, "seed": i, "group_key": "g",
             "track": "10min_16mb", "hardware": "8xH100", "status": RunStatus.QUEUED.value, "submitted_at": now}
            for i in range(QUEUED)]  # fmt: skip
    session.execute(insert(Run), rows)
    session.commit()
    ids = sorted(session.scalars(text("SELECT id FROM runs")).all())
    runs_team = {run_id: teams[i % 3] for i, run_id in enumerate(ids)}
    forecast_ids = ids[:-NEW]
    # Starts out of id order, some ties on start (position decides), every tenth not expected to start.
    estimates = {
        run_id: QueueEstimate(run_id, None if i % 10 == 9 else (i * 7919) % 50_000 + 1,
                              None if i % 10 == 9 else now + timedelta(minutes=(i * 104_729) % 20_000), "waiting for a slot")
        for i, run_id in enumerate(forecast_ids)
    }  # fmt: skip
    stored.store_forecast(session, estimates, made_at=now, teams=runs_team)
    started = forecast_ids[1000 : 1000 + STARTED]
    session.execute(update(Run).where(Run.id.in_(started)).values(status=RunStatus.RUNNING.value))
    session.commit()
    if backend == "postgresql":
        session.execute(text("ANALYZE runs"))
        session.execute(text("ANALYZE queue_estimates"))
        session.commit()
    ranked = [e.run_id for e in sorted(estimates.values(), key=stored.queue_order)]  # rank 1 first
    order = [run_id for run_id in ranked if run_id not in started] + ids[-NEW:]
    return {"order": order, "team": runs_team, "ranked": ranked, "started": set(started), "new": ids[-NEW:]}


@contextmanager
def api(db_url: str, tmp_path, **over: object) -> Iterator[TestClient]:  # noqa: ANN001
    with TestClient(create_app(Settings(home=tmp_path / "home", database_url=db_url, **over))) as client:
        yield client


def every_page(client: TestClient, headers: dict[str, str], limit: int) -> list[int]:
    listed, query = [], f"limit={limit}"
    while True:
        r = client.get(f"/api/v1/queue?{query}", headers=headers)
        assert r.status_code == 200, r.text
        listed += [item["id"] for item in r.json()]
        if "X-Next-Cursor" not in r.headers:
            return listed
        query = f"limit={limit}&after={r.headers['X-Next-Cursor']}"


def test_paging_lists_every_queued_run_once_and_members_only_their_teams(world, big_queue, db_url, tmp_path) -> None:  # noqa: ANN001
    order, team = big_queue["order"], big_queue["team"]
    with api(db_url, tmp_path) as client:
        everyone = every_page(client, world.h("root"), 1000)
        assert everyone == order  # the forecast's order, then the runs queued since; started ones left out
        for who, name in (("alice", "team-a"), ("bob", "team-b")):
            theirs = every_page(client, world.h(who), 1000)
            assert theirs == [run_id for run_id in order if team[run_id] == world.team_ids[name]]
        # An admin naming a team gets that team's runs; a small page size pages the same.
        tail = [run_id for run_id in big_queue["ranked"][97_000:] if run_id not in big_queue["started"]] + big_queue["new"]
        r = client.get("/api/v1/queue?limit=1", headers=world.h("root"))
        first_of_b = next(run_id for run_id in order if team[run_id] == world.team_ids["team-b"])
        assert client.get("/api/v1/queue?limit=1&team=team-b", headers=world.h("root")).json()[0]["id"] == first_of_b
        assert r.json()[0]["id"] == order[0]
        assert every_page_from(client, world.h("root"), 7, "r97000") == tail
        bad = client.get("/api/v1/queue?after=x1", headers=world.h("root"))
        assert bad.status_code == 422 and "after" in bad.text


def every_page_from(client: TestClient, headers: dict[str, str], limit: int, cursor: str) -> list[int]:
    listed = []
    while cursor:
        r = client.get(f"/api/v1/queue?limit={limit}&after={cursor}", headers=headers)
        listed += [item["id"] for item in r.json()]
        cursor = r.headers.get("X-Next-Cursor", "")
    return listed


def test_a_page_reads_only_its_rows_of_the_rank_index(world, big_queue, db_url, backend, tmp_path) -> None:  # noqa: ANN001
    order, team = big_queue["order"], big_queue["team"]
    alices = [run_id for run_id in order if team[run_id] == world.team_ids["team-a"]]
    with api(db_url, tmp_path) as client:
        engine = client.app.state.sessionmaker.kw["bind"]  # type: ignore[attr-defined]
        seen: list[tuple[str, object]] = []

        def record(conn, cursor, statement, parameters, *rest) -> None:  # noqa: ANN001, ANN002
            seen.append((statement, parameters))

        for who in ("alice", "root"):
            client.get("/api/v1/queue?limit=50", headers=world.h(who))  # the token's last_used_at is written once, not counted
        for who, query, expected in (("alice", "limit=50", alices[:50]), ("alice", "limit=50&after=r90000", None), ("root", "limit=50&after=r40000", None)):
            seen.clear()
            event.listen(engine, "before_cursor_execute", record)
            try:
                r = client.get(f"/api/v1/queue?{query}", headers=world.h(who))
            finally:
                event.remove(engine, "before_cursor_execute", record)
            assert r.status_code == 200 and len(r.json()) == 50
            if expected is not None:
                assert [item["id"] for item in r.json()] == expected
            assert len(seen) == 3  # the token, the forecast's marker, the page
            page_sql, params = seen[-1]
            with engine.connect() as conn:
                if backend == "postgresql":
                    # A member's page may read the team's index or the global one, filtering on the team
                    # (the planner's choice for a team with most of the queue): either way a few index rows.
                    plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {page_sql}", params))
                    assert "Index Scan using ix_queue_estimates_" in plan and "Seq Scan" not in plan and "Sort" not in plan, plan
                    blocks = sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", plan.splitlines()[1]))
                    assert 0 < blocks < 400, plan  # 50 runs by primary key and a few index pages; the queue is ~2,000 pages
                else:
                    index = "ix_queue_estimates_team_id_rank" if who == "alice" else "ix_queue_estimates_rank"
                    plan = "\n".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {page_sql}", params))
                    assert index in plan and "TEMP B-TREE" not in plan and "SCAN runs" not in plan, plan


def test_a_stale_forecast_of_a_long_queue_answers_and_says_how_old(world, big_queue, session: Session, db_url, tmp_path) -> None:  # noqa: ANN001
    old = utcnow() - timedelta(minutes=5)
    session.execute(update(StoredQueueEstimate).values(made_at=old))
    session.commit()
    with api(db_url, tmp_path) as client:
        r = client.get("/api/v1/queue?limit=50", headers=world.h("root"))
    assert [item["id"] for item in r.json()] == big_queue["order"][:50]
    assert 299 <= float(r.headers["X-Queue-Forecast-Age-S"]) <= 400
    assert r.headers["X-Queue-Forecast-Made-At"] == old.isoformat()
