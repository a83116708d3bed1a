"""What a worker process needs, built once per process: settings, DB sessions, launcher, artifact store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import get_sessionmaker
from service.settings import get_settings
from worker.artifacts import make_artifact_store
from worker.launchers.base import Launcher, get_launcher
from worker.scheduler import parse_capacity
from worker.settings import WorkerSettings


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    session_factory: sessionmaker[Session]
    launcher: Launcher
    store: Any
    capacity: dict[str, int]

    @property
    def budget_period(self) -> timedelta:
        return timedelta(days=self.settings.budget_period_days)


@lru_cache(maxsize=1)
def get_runtime() -> WorkerRuntime:
    settings = WorkerSettings()
    return WorkerRuntime(
        settings=settings,
        session_factory=get_sessionmaker(get_settings().database_url),
        launcher=get_launcher(settings.launcher, settings),
        store=make_artifact_store(settings),
        capacity=parse_capacity(settings.capacity, settings.max_concurrent_runs),
    )
