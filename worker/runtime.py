"""What a worker process needs, built once per process: settings, DB sessions, launcher, artifact store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from service.core.db import get_sessionmaker
from service.core.settings import Settings, get_settings
from service.core.storage import ArtifactStore, make_artifact_store
from worker.control.dispatch import parse_capacity
from worker.launchers import get_launcher
from worker.launchers.base import Launcher


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    launcher: Launcher
    store: ArtifactStore
    capacity: dict[str, int]

    @property
    def budget_period(self) -> timedelta:
        return timedelta(days=self.settings.budget_period_days)


@lru_cache(maxsize=1)
def get_runtime() -> WorkerRuntime:
    settings = get_settings()  # the one settings object, as the API builds it
    return WorkerRuntime(
        settings=settings,
        session_factory=get_sessionmaker(settings.database_url),
        launcher=get_launcher(settings.launcher, settings),
        store=make_artifact_store(settings),  # the same store the API reads from
        capacity=parse_capacity(settings.capacity, settings.max_concurrent_runs),
    )
