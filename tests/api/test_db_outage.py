"""PostgreSQL ending the API's connections (a restart, a failover): the request that meets
a dead pooled connection gets a 503 that says to retry, never a 500, and the next one works."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from cli.client import CaddieClient
from service.api.app import create_app
from service.core.db import get_sessionmaker
from service.core.migrate import upgrade
from service.core.settings import Settings
from service.teams import accounts
from tests.fresh_db import fresh_database


def test_a_dead_pooled_connection_is_a_503_then_the_api_recovers(tmp_path: Path) -> None:
    # A database of its own: ending every connection to the session's shared one would leave
    # dead connections in other tests' pools.
    with fresh_database() as pg_url:
        _outage(pg_url, tmp_path)


def _outage(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    with get_sessionmaker(pg_url)() as s:
        user = accounts.create_user(s, "outage")
        token = accounts.create_token(s, user, "t")[1]
        s.commit()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(Settings(home=tmp_path, database_url=pg_url, db_pool_pre_ping=False)), raise_server_exceptions=False) as c:
        assert c.get("/api/v1/runs", headers=headers).status_code == 200  # a connection now waits in the pool
        assert _terminate(pg_url) >= 1
        statuses = [c.get("/api/v1/runs", headers=headers) for _ in range(4)]
        codes = [r.status_code for r in statuses]
        assert 500 not in codes, codes
        assert codes[-1] == 200
        for r in statuses:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "1" and "retry" in r.json()["detail"][0]["msg"]
        # The CLI's client asks again on a 503 for idempotent requests: the outage never shows.
        _terminate(pg_url)
        client = CaddieClient("http://testserver", token, transport=c._transport)
        assert client.list_runs(limit=5)["items"] == []


def _terminate(pg_url: str) -> int:
    admin = create_engine(pg_url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                                {"d": pg_url.rsplit("/", 1)[1]}).scalar()
    finally:
        admin.dispose()


def test_every_request_answers_503_with_retry_after_while_the_database_is_down(tmp_path: Path) -> None:
    # Nothing listens on this port: every connection is refused, as while PostgreSQL is stopped.
    from tests.redis_server import free_port

    down = f"postgresql+psycopg://caddie@127.0.0.1:{free_port()}/caddie"
    headers = {"Authorization": "Bearer cad_whatever"}
    with TestClient(create_app(Settings(home=tmp_path, database_url=down)), raise_server_exceptions=False) as c:
        answers = [
            c.get("/api/v1/runs", headers=headers),
            c.get("/api/v1/runs/1", headers=headers),
            c.post("/api/v1/runs", headers=headers, json={"name": "x", "track": "unlimited", "hardware": "cpu", "config": {}, "seeds": [1]}),
            c.post("/api/v1/runs/1/cancel", headers=headers),
            c.get("/api/v1/queue", headers=headers),
        ]
    for r in answers:
        assert r.status_code == 503, (r.request.url, r.status_code, r.text)
        assert r.headers["Retry-After"] == "1" and r.json()["detail"][0]["type"] == "unavailable"
