"""0017: web session tokens made before it get an expiry (creation + 14 days, the cookie's lifetime
then), so those piled up are pruned; API tokens get none. Both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from service.core.migrate import upgrade
from tests.fresh_db import empty_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with empty_database() as url:
        yield url


def test_0017_gives_old_web_sessions_an_expiry_and_api_tokens_none(empty_url: str) -> None:
    upgrade(empty_url, "0016")
    engine = create_engine(empty_url)
    made = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'alice', false, :t)"), {"t": made})
            conn.execute(text("INSERT INTO api_tokens (id, user_id, name, token_hash, prefix, created_at) VALUES "
                              "(1, 1, 'laptop', :a, 'cad_a', :t), (2, 1, 'web session of #1', :b, 'cad_b', :t)"),
                         {"a": "a" * 64, "b": "b" * 64, "t": made})  # fmt: skip
        upgrade(empty_url)
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, expires_at FROM api_tokens ORDER BY id")).all())
    finally:
        engine.dispose()
    assert rows[1] is None
    expires = rows[2] if isinstance(rows[2], datetime) else datetime.fromisoformat(rows[2])
    if expires.tzinfo is None:  # SQLite keeps UTC without the zone
        expires = expires.replace(tzinfo=timezone.utc)
    assert expires == made + timedelta(days=14)
