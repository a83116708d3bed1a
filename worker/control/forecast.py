"""The queue forecast, computed once by the control worker and stored for every API replica.

Beat sends ``caddie.forecast_tick`` every queue_forecast_interval_s (worker/celery_app.py);
``refresh_forecast_niced`` runs ``refresh_forecast`` in a thread of lower CPU priority (a second or
so of CPU at 50,000 queued runs, which should wait for requests on a machine shared with the API);
``refresh_forecast`` plays the scheduling policy forward (service.queue.positions.queue_estimates,
the very figures an API computed per process before) and replaces the stored forecast
(service.queue.stored) in one transaction. APIs read it and never compute it while it is fresh.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def lower_thread_priority(by: int) -> int:
    """Make the calling thread ``by`` nicer (Linux: a thread id names one thread to setpriority), leaving
    the process's other threads as they are; returns the thread's niceness after. Elsewhere a no-op."""
    if sys.platform != "linux":
        return 0
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    if by > 0:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + by))
    return os.getpriority(os.PRIO_PROCESS, tid)


def refresh_forecast_niced(make_session: Callable[[], Session], settings: Settings) -> int:
    """``refresh_forecast`` in a thread CADDIE_QUEUE_FORECAST_NICE nicer than the caller: a thread of its own,
    since a raised niceness cannot be lowered again without privilege and the worker's other ticks keep theirs."""

    def work() -> int:
        nice = lower_thread_priority(settings.queue_forecast_nice)
        log.debug("queue forecast at niceness %d", nice)
        with make_session() as session:
            return refresh_forecast(session, settings)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-forecast") as pool:
        return pool.submit(work).result()
