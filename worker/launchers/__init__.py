"""Launchers: where a run's trainer process actually runs (this machine, or SkyPilot)."""
