"""An API or worker process at rest does not carry the heavy libraries (scipy ~90 MB, torch, plotly):
they are imported where used."""

from __future__ import annotations

import subprocess
import sys


def test_the_api_and_worker_import_no_heavy_library() -> None:
    code = (
        "import sys, service.api.app, worker.tasks, worker.control.dispatch, service.queue.positions;"
        "print(sorted(m for m in ('scipy', 'torch', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_a_sqlite_deployment_runs_without_the_postgresql_driver(tmp_path) -> None:  # noqa: ANN001
    """caddie up on SQLite where psycopg is not installed (found on a GPU node whose wheels left it out):
    the API, the workers and the forecast's store import and work; only a PostgreSQL URL needs the driver."""
    code = f"""
import sys
sys.modules["psycopg"] = None  # as if not installed: any import of it fails
import service.api.app, worker.tasks, worker.control.forecast
from service.core.db import get_sessionmaker
from service.core.migrate import upgrade
from service.core.settings import Settings
from worker.control.forecast import refresh_forecast
url = "sqlite:///{tmp_path / 'caddie.db'}"
upgrade(url)
with get_sessionmaker(url)() as session:
    print(refresh_forecast(session, Settings(database_url=url)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr[-2000:]
