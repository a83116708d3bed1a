"""Fixtures shared by every test package: real PostgreSQL and Redis, isolated.

Each test session gets its own fresh PostgreSQL database and its own redis-server
on a free port, so suites that run at the same time never see each other's rows,
and no test touches a server it did not start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fresh_db import empty_database
from tests.redis_server import PrivateRedis, private_redis
from tests.world import backend, client, db_url, migrated_url, session, settings, spec, world  # noqa: F401 - fixtures for every room

# Tests reuse one database (and so run ids) test after test: a queue forecast cached by one
# must never answer the next. The cache has its own test (tests/api/test_api_queue.py).
os.environ.setdefault("CADDIE_QUEUE_FORECAST_TTL_S", "0")
# The suite's specs ask for H100:8 on machines with no GPU: they are accepted and run on what is
# here. The refusal a real CPU deployment gives has its own test (tests/core/test_hardware.py).
os.environ.setdefault("CADDIE_UNAVAILABLE_HARDWARE", "accept")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a brand-new PostgreSQL database, dropped after the session."""
    with empty_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateRedis]:
    """A redis-server of this session's own on a free port: nothing here flushes,
    stops or restarts a server the tests did not start."""
    with private_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: PrivateRedis) -> str:
    return f"{redis_server.url}/0"


@pytest.fixture(scope="session")
def smoke_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline smoke corpus (datasets/ and tokenizers/), built once for every stack that runs the trainer."""
    from trainer.data import build_smoke_corpus

    root = tmp_path_factory.mktemp("smoke_corpus")
    build_smoke_corpus(root)
    return root
