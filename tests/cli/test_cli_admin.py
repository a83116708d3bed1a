"""`caddie admin ...`: the API's rules for names, and no stray empty database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.core.db import get_sessionmaker
from service.core.models import ApiToken, Team, User
from tests.cli.conftest import Caddie

HANDLE_WORDS = "letters, digits, '_', '.', '-'"


def _counts(caddie: Caddie) -> tuple[int, int, int]:
    with get_sessionmaker(caddie.db_url)() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Team, User, ApiToken))  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["", "two words", " lead", "tab\there", "esc\x1b[31m", "_underscore-first", "x" * 101, "ünï"])
def test_team_and_user_names_follow_the_api_rule(caddie: Caddie, name: str) -> None:
    before = _counts(caddie)
    assert caddie.fails("admin", "create-team", name) == f"name: team name must be {HANDLE_WORDS}; at most 100 characters; starting with a letter or digit"
    assert caddie.fails("admin", "create-user", name).startswith(f"name: user name must be {HANDLE_WORDS}")
    assert _counts(caddie) == before


def test_token_names_weights_and_emails_follow_the_api_rule(caddie: Caddie) -> None:
    before = _counts(caddie)
    assert caddie.fails("admin", "create-token", "ann", "--name", "ci\x1b]8;;http://x\x07") == "name: token name must not contain control characters (found \\x07, \\x1b)"
    assert caddie.fails("admin", "create-token", "ann", "--name", "") == "name: token name must be 1 to 100 characters"
    assert caddie.fails("admin", "create-team", "ok-team", "--weight", "0") == "weight: must be > 0 and <= 1000"
    assert caddie.fails("admin", "create-team", "ok-team", "--budget-gpu-hours", "-1") == "budget_gpu_hours: must be a finite number >= 0"
    assert caddie.fails("admin", "create-user", "ok-user", "--email", "a\x00@b") == "email: email must not contain control characters (found \\x00)"
    assert _counts(caddie) == before
    caddie.ok("admin", "create-team", "ok.team_2")


def test_no_database_is_an_error_not_a_new_empty_one(caddie: Caddie, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = tmp_path / ".caddie" / "caddie.db"  # CADDIE_HOME defaults to ./.caddie
    for args in (["admin", "create-team", "golfers"], ["admin", "create-user", "ann"], ["admin", "create-token", "ann"]):
        msg = caddie.fails(*args, CADDIE_DATABASE_URL=None, CADDIE_HOME=None)
        assert msg == f"no caddie database at {default}; run `caddie up` or set CADDIE_DATABASE_URL"
    assert not (tmp_path / ".caddie").exists()
    # The same for a SQLite URL that names a missing file.
    missing = tmp_path / "elsewhere" / "caddie.db"
    msg = caddie.fails("admin", "create-team", "golfers", CADDIE_DATABASE_URL=f"sqlite:///{missing}")
    assert msg == f"no caddie database at {missing}; run `caddie up` or set CADDIE_DATABASE_URL"
    assert not missing.parent.exists()
    # `caddie db upgrade` is the command that makes one; then admin commands work on it.
    caddie.ok("db", "upgrade", CADDIE_DATABASE_URL=None, CADDIE_HOME=None)
    assert default.is_file()
    caddie.ok("admin", "create-team", "golfers", CADDIE_DATABASE_URL=None, CADDIE_HOME=None)
