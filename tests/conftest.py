"""Fixtures shared by every test package: real PostgreSQL and Redis, isolated.

Each test session gets its own fresh PostgreSQL database and its own Redis db
number, so suites that run at the same time never see each other's rows.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("CADDIE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE_URL = os.environ.get("CADDIE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a brand-new PostgreSQL database, dropped after the session."""
    from sqlalchemy import create_engine, text

    name = f"caddie_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis db number (1..15) picked at random and flushed before and after."""
    import redis

    db = random.randint(1, 15)
    url = f"{REDIS_BASE_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        try:
            client.flushdb()
        except redis.RedisError:
            pass  # a test may have restarted the server on purpose
