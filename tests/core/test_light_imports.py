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
