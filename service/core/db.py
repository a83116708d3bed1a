"""Engines and sessions.

One engine per database URL per process (engines hold the connection pool;
making one per request would be slow). SQLite gets WAL, foreign keys and a
busy timeout so the API and the worker processes can share one file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.core.settings import Settings, get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """A new engine for ``url``. Prefer :func:`get_engine`, which caches."""
    settings = settings or get_settings()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=settings.db_echo, connect_args={"check_same_thread": False})
        _install_sqlite_pragmas(engine, settings.sqlite_busy_timeout_ms)
        return engine
    return create_engine(
        url,
        echo=settings.db_echo,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=settings.db_pool_recycle_s,
    )


def _install_sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 (DBAPI objects)
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer, so the API stays responsive
        # while a worker appends log chunks.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()


def get_engine(url: str | None = None, settings: Settings | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: CADDIE_DATABASE_URL)."""
    url = url or (settings or get_settings()).database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, settings)
        return engine


def get_sessionmaker(url: str | None = None, settings: Settings | None = None) -> sessionmaker[Session]:
    """A cached sessionmaker bound to :func:`get_engine` for ``url``."""
    url = url or (settings or get_settings()).database_url
    engine = get_engine(url, settings)
    with _lock:
        maker = _sessionmakers.get(url)
        if maker is None:
            maker = _sessionmakers[url] = sessionmaker(engine, expire_on_commit=False)
        return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back on an exception."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every cached pool (tests, and forked worker processes)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _sessionmakers.clear()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched. Its result is a CursorResult at run time; the typed
    Session.execute says only Result, which has no rowcount."""
    return cast(CursorResult[Any], result).rowcount
