"""The queue forecast, computed once by the control worker and stored for every API replica.

Beat sends ``caddie.forecast_tick`` every queue_forecast_interval_s (worker/celery_app.py);
``refresh_forecast`` plays the scheduling policy forward (service.queue.positions.queue_estimates,
the very figures an API computed per process before) and replaces the stored forecast
(service.queue.stored) in one transaction. APIs read it and never compute it while it is fresh.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from sqlalchemy.orm import Session

from service.core.models import utcnow
from service.core.settings import Settings
from service.queue import stored
from service.queue.positions import queue_forecast

log = logging.getLogger(__name__)


def refresh_forecast(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Compute the forecast as of ``now`` and store it; returns the queued runs it covers."""
    now = now or utcnow()
    started = time.perf_counter()
    estimates, teams = queue_forecast(session, settings, now)
    computed = time.perf_counter()
    written = stored.store_forecast(session, estimates, made_at=now, teams=teams)
    log.info("queue forecast of %d queued runs: computed in %.3f s, stored in %.3f s (%d rows changed)",
             len(estimates), computed - started, time.perf_counter() - computed, written)
    return len(estimates)
