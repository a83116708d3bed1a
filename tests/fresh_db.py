"""A PostgreSQL database of one's own, for tests whose background processes scan
every run (a scheduler, a janitor) and so must not see other tests' rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL


@contextmanager
def fresh_database() -> Iterator[str]:
    """URL of a brand-new database, migrated to head; dropped on exit."""
    from service.migrate import upgrade

    name = f"caddie_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        from service.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
