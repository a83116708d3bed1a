"""Every way `caddie` can be used wrongly ends in one clear line and exit code 1,
never a traceback, and stores nothing."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

from sqlalchemy import func, select

from cli.client import RETRY_DELAYS_S, CaddieClient
from service.core.db import get_sessionmaker
from service.core.models import Run, User
from service.core.settings import Settings
from tests.cli.conftest import Caddie, bound_socket, closed_port_url, serve


def run_count(c: Caddie) -> int:
    with get_sessionmaker(c.db_url)() as s:
        return s.scalar(select(func.count(Run.id))) or 0


def test_bad_spec_names_each_field_and_stores_nothing(caddie: Caddie, spec_file: Path) -> None:
    before = run_count(caddie)
    msg = caddie.fails("submit", str(spec_file), "--set", "NUM_LAYRES=3")
    assert msg == "invalid request: config.NUM_LAYRES: unknown knob"
    msg = caddie.fails("submit", str(spec_file), "--set", "MODEL_DIM=-1", "--seeds", "1,1")
    assert msg.startswith("invalid request: ")
    assert "config.MODEL_DIM: must be >= 16" in msg and "seeds: seeds must be unique; repeated: 1" in msg
    spec_file.write_text(spec_file.read_text().replace("hardware: H100:8", "hardware: TPU:9"))
    assert caddie.fails("submit", str(spec_file)).startswith("invalid request: hardware: must be one of H100:8")
    assert run_count(caddie) == before


def test_spec_file_problems(caddie: Caddie, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert caddie.fails("submit", str(missing)) == f"spec file {missing} not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: smoke\nconfig: {NUM_LAYERS: [1\n")
    assert caddie.fails("submit", str(bad)).startswith(f"spec file {bad}: invalid YAML at line 3, column 1")
    bad.write_text("- just\n- a list\n")
    assert caddie.fails("submit", str(bad)) == f"spec file {bad}: expected a mapping of name, notes, team, track, hardware, priority, config, seeds, seed, allow_noncompliant, abort_if_behind, script, files, env, public_env, data, score_label, environment, got list"
    bad.write_text("name: x\ntrack: unlimited\nhardware: cpu\nconfgi: {}\n")
    assert "unknown key(s) confgi" in caddie.fails("submit", str(bad))
    bad.write_text("name: x\ntrack: unlimited\nhardware: cpu\n")
    assert caddie.fails("submit", str(bad), "--seeds", "1,two") == "--seeds must be comma-separated integers, got '1,two'"
    assert caddie.fails("submit", str(bad), "--set", "NUM_LAYERS") == "--set expects KNOB=VALUE, got 'NUM_LAYERS'"


def test_missing_or_bad_token(caddie: Caddie, spec_file: Path) -> None:
    assert caddie.fails("runs", CADDIE_TOKEN=None) == "token missing or invalid: run caddie login"
    result = caddie.cli("submit", str(spec_file), CADDIE_TOKEN="cad_wrong-secret-123")
    assert result.exit_code == 1 and result.stderr.strip() == "error: token missing or invalid: run caddie login"
    assert "cad_wrong-secret-123" not in result.output
    # The real token never shows up in any output either, error or not.
    for args in (("runs",), ("show", "424242"), ("submit", str(spec_file), "--set", "NUM_LAYRES=1")):
        assert caddie.token not in caddie.cli(*args).output


def test_unreachable_server(caddie: Caddie) -> None:
    url = closed_port_url()
    assert caddie.fails("runs", CADDIE_URL=url) == f"cannot reach caddie at {url}: is `caddie up` running?"
    assert caddie.fails("show", "1", CADDIE_URL="ftp://nowhere") == "not a valid caddie URL: 'ftp://nowhere' (set CADDIE_URL or run caddie login)"


def test_connection_refused_is_retried_and_submit_stays_single(caddie: Caddie, spec_file: Path, tmp_path: Path) -> None:
    # The server starts listening only after the client's first attempts were
    # refused; the retried POST then succeeds, and one run exists.
    sock = bound_socket()
    before = run_count(caddie)
    with serve(Settings(home=tmp_path, database_url=caddie.db_url), sock=sock, delay_s=RETRY_DELAYS_S[0] + 0.1) as url:
        out = caddie.ok("submit", str(spec_file), "--seeds", "99", CADDIE_URL=url).stdout
    assert "submitted 1 run(s)" in out
    assert run_count(caddie) == before + 1


def test_idempotency_key_returns_the_same_runs(caddie: Caddie) -> None:
    body = {"name": "idem", "track": "unlimited", "hardware": "cpu", "config": {"STACK": "2026-03-23", "NUM_LAYERS": 4}, "seeds": [1, 2]}
    key = uuid.uuid4().hex
    with CaddieClient(caddie.url, caddie.token) as client:
        first = client.submit(body, key)
        again = client.submit(body, key)
        other = client.submit(body, uuid.uuid4().hex)
    assert [r["id"] for r in again["runs"]] == [r["id"] for r in first["runs"]]
    assert not {r["id"] for r in other["runs"]} & {r["id"] for r in first["runs"]}


def test_login_writes_a_private_config_file_and_env_wins(caddie: Caddie) -> None:
    path = caddie.home / "config.toml"
    path.unlink(missing_ok=True)
    assert caddie.fails("login", "--url", caddie.url, "--token", "cad_nope", CADDIE_URL=None, CADDIE_TOKEN=None) == "token missing or invalid: run caddie login"
    assert not path.exists()
    result = caddie.ok("login", "--url", caddie.url, "--token", caddie.token, CADDIE_URL=None, CADDIE_TOKEN=None)
    assert "logged in as ann" in result.stdout and caddie.token not in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # From the file alone ...
    caddie.ok("runs", CADDIE_URL=None, CADDIE_TOKEN=None)
    # ... and the environment wins over it.
    assert caddie.fails("runs", CADDIE_URL=None, CADDIE_TOKEN="cad_env-wins") == "token missing or invalid: run caddie login"
    path.unlink()


def test_admin_errors_keep_the_database_unchanged(caddie: Caddie, tmp_path: Path) -> None:
    assert caddie.fails("admin", "create-team", "golfers") == "team 'golfers' already exists"
    assert caddie.fails("admin", "create-user", "zed", "--team", "no-such-team") == "team 'no-such-team' not found"
    with get_sessionmaker(caddie.db_url)() as s:
        assert s.scalar(select(User.id).where(User.name == "zed")) is None  # rolled back with the membership
    assert caddie.fails("admin", "create-user", "zed", "--team", "golfers", "--role", "boss") == "--role must be one of member, admin, got 'boss'"
    assert caddie.fails("admin", "create-token", "nobody") == "user 'nobody' not found"
    (tmp_path / "empty.db").touch()  # an existing file without tables (a missing one: test_cli_admin.py)
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    msg = caddie.fails("admin", "create-team", "x", CADDIE_DATABASE_URL=empty)
    assert msg == f"the database {empty} has no caddie tables: run caddie db upgrade"
