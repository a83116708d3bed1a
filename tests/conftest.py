"""Fixtures shared by every test package: real PostgreSQL and Redis, isolated.

Each test session gets its own fresh PostgreSQL database and its own Redis db
number, so suites that run at the same time never see each other's rows.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fresh_db import empty_database

REDIS_BASE_URL = os.environ.get("CADDIE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Tests reuse one database (and so run ids) test after test: a queue forecast cached by one
# must never answer the next. The cache has its own test (tests/service/test_api_queue.py).
os.environ.setdefault("CADDIE_QUEUE_FORECAST_TTL_S", "0")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a brand-new PostgreSQL database, dropped after the session."""
    with empty_database() as url:
        yield url


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


@pytest.fixture(scope="session")
def smoke_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline smoke corpus (datasets/ and tokenizers/), built once for every stack that runs the trainer."""
    from trainer.data import build_smoke_corpus

    root = tmp_path_factory.mktemp("smoke_corpus")
    build_smoke_corpus(root)
    return root
