"""SkyPilot's real API server for tests: ``python -m sky.server.server`` (what `sky api start` runs) from a
Python environment of its own, on a free port, with a HOME of its own (no one's credentials, no one's clusters).

Its own environment because SkyPilot 0.9.2's server does not start on caddie's fastapi (FastAPI() lost the
``prefix`` keyword it passes); the client side, in caddie's environment, works. The environment is built once
per machine with uv from the package index (this SkyPilot release, fastapi<0.116) and reused; a test skips
where it cannot be built (no index)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.redis_server import free_port

START_TIMEOUT_S = 120.0


def sky_server_env() -> Path:
    """The server's environment (its bin/python), built now unless this machine has it."""
    release = version("skypilot")
    env = Path(tempfile.gettempdir()) / f"caddie-test-sky-server-{release}"
    if (env / "ready").exists():
        return env
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("no uv to build the SkyPilot server's environment")
    building = Path(tempfile.mkdtemp(prefix=env.name + "-", dir=env.parent))
    steps = [[uv, "venv", "-q", "--python", sys.executable, str(building)],
             [uv, "pip", "install", "-q", "--python", str(building / "bin" / "python"), f"skypilot=={release}", "fastapi<0.116"]]  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            pytest.skip(f"cannot build the SkyPilot server's environment: {done.stderr.strip()[-300:]}")
    # Renamed whole when built (`python -m` finds its packages from where the environment is now).
    (building / "ready").write_text(release)
    try:
        building.rename(env)
    except OSError:  # another session built it first
        shutil.rmtree(building, ignore_errors=True)
    return env


@contextmanager
def running_sky_server(folder: Path) -> Iterator[str]:
    """Start the server (its HOME and log under ``folder``), yield its endpoint for SKYPILOT_API_SERVER_ENDPOINT;
    the server and the request workers it started are stopped after."""
    python = sky_server_env() / "bin" / "python"
    port = free_port()
    home = folder / "sky-home"
    home.mkdir(parents=True, exist_ok=True)
    log = folder / "sky-server.log"
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    proc = subprocess.Popen([str(python), "-m", "sky.server.server", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{endpoint}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the executor's request processes too
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        # What ignores SIGTERM (multiprocessing's resource tracker) or outlived the server goes now.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
