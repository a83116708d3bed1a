"""PostgreSQL databases of one's own for tests: created fresh, dropped after.

Suites that run at the same time never see each other's rows, and tests whose
background processes scan every run (a scheduler, a janitor) see only their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("CADDIE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def empty_database() -> Iterator[str]:
    """URL of a brand-new, empty database; dropped on exit."""
    name = f"caddie_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from service.core.db import get_engine

        get_engine(url).dispose()  # the process's pooled connections would block the drop
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def fresh_database() -> Iterator[str]:
    """URL of a brand-new database, migrated to head; dropped on exit."""
    from service.core.migrate import upgrade

    with empty_database() as url:
        upgrade(url)
        yield url
