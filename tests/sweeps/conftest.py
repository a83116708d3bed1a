"""The real stack the sweeps' end-to-end modules run on: one per module, on a database of its own (the stack's
scheduler acts on every run it sees)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, _stack
from tests.fresh_db import fresh_database


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, smoke_corpus_dir: Path) -> Iterator[Stack]:
    with fresh_database() as pg_url:
        yield from _stack(tmp_path_factory, pg_url, redis_url, smoke_corpus_dir)
