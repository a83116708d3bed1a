"""The CLI against the real API: a uvicorn server in a thread on a free
loopback port, a real database (a SQLite file, or PostgreSQL through
``pg_url``), and Typer's CliRunner driving ``caddie`` with its own httpx client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner, Result

from cli.main import app as cli_app
from service.api.app import create_app
from service.core.settings import Settings


def bound_socket() -> socket.socket:
    """A socket bound to a free loopback port, not yet listening (connections are refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve(settings: Settings, sock: socket.socket | None = None, delay_s: float = 0.0) -> Iterator[str]:
    """Run the app on 127.0.0.1 (a port the OS picks, or ``sock``) until the
    block ends; yield its URL. With ``delay_s`` the server starts listening
    that much later, in the background, and the block starts at once."""
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    def run() -> None:
        time.sleep(delay_s)
        server.run(sockets=[sock])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10 + delay_s
    while not server.started and not delay_s:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class Caddie:
    """One running caddie and the environment the CLI sees."""

    db_url: str
    home: Path
    url: str = ""
    token: str | None = None
    runner: CliRunner = field(default_factory=CliRunner)

    def env(self, **over: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = {
            "CADDIE_DATABASE_URL": self.db_url,
            "CADDIE_HOME": str(self.home),
            "CADDIE_CONFIG": str(self.home / "config.toml"),
            "CADDIE_URL": self.url or None,
            "CADDIE_TOKEN": self.token,
            "COLUMNS": "160",
        }
        env.update(over)
        return env

    def cli(self, *args: str, **env: str | None) -> Result:
        return self.runner.invoke(cli_app, list(args), env=self.env(**env))

    def ok(self, *args: str, **env: str | None) -> Result:
        result = self.cli(*args, **env)
        assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
        return result

    def fails(self, *args: str, **env: str | None) -> str:
        """Run a command that must fail cleanly; return its one-line error."""
        result = self.cli(*args, **env)
        assert result.exit_code == 1, (args, result.exit_code, result.stdout, result.stderr)
        # A clean failure is a SystemExit from typer.Exit, never an exception escaping.
        assert isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0].removeprefix("error: ")

    def bootstrap(self, team: str, user: str) -> str:
        """Migrate, create a team and a team admin, and return a fresh token (all through the CLI)."""
        self.ok("db", "upgrade")
        self.ok("admin", "create-team", team)
        self.ok("admin", "create-user", user, "--team", team, "--role", "admin")
        token = self.ok("admin", "create-token", user, "--name", "tests").stdout.strip()
        assert token.startswith("cad_") and len(token.splitlines()) == 1
        return token


@contextmanager
def running_caddie(db_url: str, home: Path, team: str, user: str) -> Iterator[Caddie]:
    caddie = Caddie(db_url=db_url, home=home)
    caddie.token = caddie.bootstrap(team, user)
    with serve(Settings(home=home, database_url=db_url)) as url:
        caddie.url = url
        yield caddie


@pytest.fixture(scope="module")
def caddie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caddie]:
    """A bootstrapped caddie on a fresh SQLite file, shared by a module's tests."""
    home = tmp_path_factory.mktemp("caddie")
    with running_caddie(f"sqlite:///{home / 'caddie.db'}", home, "golfers", "ann") as c:
        yield c


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: baseline-10L\n"
        "notes: 'seed stack; $(touch /tmp/pwned) stays text'\n"
        "track: 10min_16mb\n"
        "hardware: H100:8\n"
        "config:\n  STACK: '2026-03-23'\n  NUM_LAYERS: 10\n  XSA_LAST_N: 4\n"
        "seeds: [7]\n"
    )
    return path


def api_get(caddie: Caddie, path: str) -> httpx.Response:
    return httpx.get(caddie.url + path, headers={"Authorization": f"Bearer {caddie.token}"})
