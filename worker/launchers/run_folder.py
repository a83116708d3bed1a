"""A script run's files, written into its run folder (local) or a staging folder SkyPilot uploads.

Names were checked when the spec was accepted (service.runs.scripts.spec); they are checked
again here, where a bad one would write outside the folder, and refused with LaunchFailed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from service.runs.scripts.spec import SCRIPT_NAME, file_name_problem
from worker.launchers.base import LaunchFailed


def place_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write each file under ``folder`` by its relative name (folders made as needed)."""
    root = folder.resolve()
    for name, data in files.items():
        problem = None if name == SCRIPT_NAME else file_name_problem(name)
        target = (root / name).resolve()
        if problem or not target.is_relative_to(root):
            raise LaunchFailed(f"script file {name!r} cannot be placed in the run folder: {problem or 'outside it'}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
