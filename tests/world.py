"""A migrated database, an API client and a world of teams and users on it: the fixtures of
every room's tests (tests/conftest.py offers them to all). Every database test runs on a
real PostgreSQL database (``pg_url``) and on a SQLite file, migrated with Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.db import get_engine, get_sessionmaker
from service.core.migrate import upgrade
from service.core.models import ApiToken, Base
from service.core.settings import Settings
from service.teams import accounts
from service.teams.tokens import Principal, revoke_token

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", params=BACKENDS)
def migrated_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database at the head revision, one per backend per test session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'caddie.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    return url


@pytest.fixture
def db_url(migrated_url: str) -> str:
    """The migrated database, emptied before the test."""
    engine = get_engine(migrated_url)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
            if _has_sqlite_sequence(conn):
                conn.execute(text("DELETE FROM sqlite_sequence"))
    return migrated_url


def _has_sqlite_sequence(conn) -> bool:  # noqa: ANN001
    return conn.execute(text("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'")).first() is not None


@pytest.fixture
def backend(db_url: str) -> str:
    return "postgresql" if db_url.startswith("postgresql") else "sqlite"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url)


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    s = get_sessionmaker(db_url)()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@dataclass
class World:
    """Two teams and one of every kind of caller.

    alice: member of A; aaron: admin of A; bob: member of B; root: global admin
    (in no team); carol: member of A whose only token is revoked.
    """

    tokens: dict[str, str]
    team_ids: dict[str, int]
    user_ids: dict[str, int]

    def h(self, who: str | None) -> dict[str, str]:
        """Authorization header for ``who`` (None: no header)."""
        if who is None:
            return {}
        if who == "garbage":
            return {"Authorization": "Bearer cad_not-a-real-token"}
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def world(session: Session) -> World:
    a = accounts.create_team(session, "team-a")
    b = accounts.create_team(session, "team-b")
    users = {
        "alice": accounts.create_user(session, "alice"),
        "aaron": accounts.create_user(session, "aaron"),
        "bob": accounts.create_user(session, "bob"),
        "root": accounts.create_user(session, "root", is_admin=True),
        "carol": accounts.create_user(session, "carol"),
    }
    accounts.add_member(session, a, users["alice"])
    accounts.add_member(session, a, users["aaron"], "admin")
    accounts.add_member(session, b, users["bob"])
    accounts.add_member(session, a, users["carol"])
    tokens = {name: accounts.create_token(session, user, "test")[1] for name, user in users.items()}
    carol_token = session.scalars(select(ApiToken).where(ApiToken.user_id == users["carol"].id)).one()
    revoke_token(session, Principal(users["carol"].id, "carol", False), carol_token.id)
    session.commit()
    return World(tokens=tokens, team_ids={"team-a": a.id, "team-b": b.id}, user_ids={n: u.id for n, u in users.items()})


def _spec(**over: object) -> dict:
    """The tests' configs are written against the 2026-03-23 stack (9 layers of it, and so on): its STACK
    goes into a trainer config that names none. A script spec (``script`` set) has no config."""
    body: dict = {"name": "baseline", "track": "10min_16mb", "hardware": "H100:8", "config": {"NUM_LAYERS": 9}, "seeds": [1337]}
    body.update(over)
    if isinstance(body.get("config"), dict) and "STACK" not in body["config"] and not body.get("script"):
        body["config"] = {"STACK": "2026-03-23", **body["config"]}
    return body


@pytest.fixture
def spec():
    """``spec(**fields)``: a small valid run spec with some fields replaced."""
    return _spec
