"""The main path through `caddie`, on SQLite and on PostgreSQL: bootstrap an
admin and a token, submit three seeds, list, show, cancel."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import ApiToken, Run, Team
from tests.cli.conftest import Caddie, running_caddie
from trainer.config import TrainerConfig


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_caddie(request: pytest.FixtureRequest, tmp_path: Path):
    suffix = uuid.uuid4().hex[:6]
    db_url = f"sqlite:///{tmp_path / 'caddie.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with running_caddie(db_url, tmp_path, f"golf-{suffix}", f"ann-{suffix}") as c:
        c.team = f"golf-{suffix}"  # type: ignore[attr-defined]
        yield c


def submitted_ids(stdout: str) -> list[int]:
    match = re.search(r"ids ([\d, ]+) \(seeds", stdout)
    assert match, stdout
    return [int(x) for x in match.group(1).split(",")]


def test_bootstrap_submit_list_show_cancel(fresh_caddie: Caddie, spec_file: Path) -> None:
    c = fresh_caddie
    team = c.team  # type: ignore[attr-defined]
    # The token is stored hashed only: the secret printed once is nowhere in the database.
    with get_sessionmaker(c.db_url)() as s:
        hashes = list(s.scalars(select(ApiToken.token_hash)))
    assert c.token not in hashes and len(hashes) >= 1

    out = c.ok("submit", str(spec_file), "--seeds", "1337,42,2025", "--team", team, "--set", "MODEL_DIM=384").stdout
    ids = submitted_ids(out)
    assert len(ids) == 3
    with get_sessionmaker(c.db_url)() as s:
        runs = list(s.scalars(select(Run).where(Run.id.in_(ids)).order_by(Run.id)))
        team_name = s.scalar(select(Team.name).where(Team.id == runs[0].team_id))
    assert [r.seed for r in runs] == [1337, 42, 2025]
    assert len({r.group_key for r in runs}) == 1
    assert team_name == team
    assert runs[0].spec["NUM_LAYERS"] == 10 and runs[0].spec["MODEL_DIM"] == 384
    assert runs[0].notes == "seed stack; $(touch /tmp/pwned) stays text"
    assert runs[0].idempotency_key  # the CLI always sends one

    # STACK=2026-04-27 is a preset's name: YAML would read it as a date, the CLI sends the text
    dated = spec_file.with_name("dated.yaml")
    dated.write_text(spec_file.read_text().replace("config:\n", "config:\n  STACK: 2026-03-23\n", 1))
    [by_set] = submitted_ids(c.ok("submit", str(spec_file), "--seeds", "5", "--team", team, "--set", "STACK=2026-04-27").stdout)
    [by_file] = submitted_ids(c.ok("submit", str(dated), "--seeds", "6", "--team", team).stdout)
    with get_sessionmaker(c.db_url)() as s:
        stacks = {r.id: TrainerConfig.from_dict(r.spec).stack for r in s.scalars(select(Run).where(Run.id.in_([by_set, by_file])))}
    assert stacks == {by_set: "2026-04-27", by_file: "2026-03-23"}

    listing = c.ok("runs", "--team", team).stdout
    for run_id in ids:
        assert re.search(rf"^\s*{run_id}\s+baseline-10L\s", listing, re.M), listing
    assert "QUEUED" in listing
    group = c.ok("runs", "--group", runs[0].group_key, "--limit", "2").stdout
    assert "more with --all" in group
    assert len(re.findall(r"baseline-10L", c.ok("runs", "--group", runs[0].group_key, "--limit", "2", "--all").stdout)) == 3

    shown = c.ok("show", str(ids[1])).stdout
    for text in ("baseline-10L", "42", runs[0].group_key, "NUM_LAYERS=10", "QUEUED", "submitted", "$(touch /tmp/pwned)"):
        assert text in shown, (text, shown)

    assert "CANCELLED" in c.ok("cancel", str(ids[1])).stdout
    assert c.fails("cancel", str(ids[1])) == f"run {ids[1]} is already CANCELLED"
    assert "cancelled by user" in c.ok("show", str(ids[1])).stdout
    cancelled = c.ok("runs", "--team", team, "--status", "cancelled").stdout
    assert re.search(rf"^\s*{ids[1]}\s", cancelled, re.M) and not re.search(rf"^\s*{ids[0]}\s", cancelled, re.M)
    assert c.fails("show", "999999") == "run 999999 not found"
