"""Launchers: where a run's trainer process actually runs (this machine, or SkyPilot)."""

from __future__ import annotations

from typing import Any

from worker.launchers.base import Launcher


def get_launcher(name: str, settings: Any) -> Launcher:
    """The launcher called `name` ("local" or "skypilot"), configured from the settings."""
    if name == "local":
        from worker.launchers.local import LocalLauncher

        return LocalLauncher(settings)
    if name == "skypilot":
        from worker.launchers.skypilot import SkyPilotLauncher

        return SkyPilotLauncher(settings)
    raise ValueError(f"unknown launcher {name!r}: expected 'local' or 'skypilot'")
