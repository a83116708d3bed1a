"""The Celery app: broker, queues, routing, reliability settings and the beat schedule.

Broker: CADDIE_BROKER_URL — Redis in production (``redis://redis:6379/0``); by
default Kombu's SQLAlchemy transport on a SQLite file under CADDIE_HOME, which
needs no server (``caddie up``). There is no result backend: the database is
the source of truth and tasks return nothing anyone waits for.

Queues: ``runs`` carries only ``execute_run`` (long; one slot per concurrent
run), ``control`` carries the light periodic work (scheduler tick, janitor).
Start workers with ``-Q runs`` and ``-Q control`` so a long run never delays
dispatch.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.platforms import EX_FAILURE
from celery.signals import worker_init, worker_process_init, worker_ready
from celery.worker.consumer import Consumer

from service.core.settings import Settings, get_settings

RUNS_QUEUE = "runs"
CONTROL_QUEUE = "control"

EXECUTE_RUN = "caddie.execute_run"
SCHEDULE_TICK = "caddie.schedule_tick"
JANITOR_TICK = "caddie.janitor_tick"
FORECAST_TICK = "caddie.forecast_tick"
WEBHOOK_TICK = "caddie.webhook_tick"


log = logging.getLogger(__name__)


class QuickReconnectConsumer(Consumer):
    """Celery's consumer, retrying a lost broker every 0.5 s .. broker_retry_max_s.

    Kombu's default backoff grows to 30 s between tries, so a worker could sit up to
    30 s on a broker that is back, with free slots and queued runs.
    """

    def ensure_connected(self, conn: Any) -> Any:
        retry_max = get_settings().broker_retry_max_s
        conn.ensure_connection = functools.partial(conn.ensure_connection, interval_start=0.5, interval_step=0.5, interval_max=retry_max)
        return super().ensure_connected(conn)


def celery_config(settings: Settings) -> dict:
    """Celery's settings for `settings` (a plain dict, so tests can read it)."""
    broker = settings.broker_url
    if broker.startswith(("redis://", "rediss://", "sentinel://")):
        # Unacknowledged messages of a lost worker come back after this long.
        transport_options = {"visibility_timeout": settings.visibility_timeout_s}
    else:
        transport_options = {}
    return {
        "broker_url": broker,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        # Acknowledge after the task ran, and give a message back if its worker
        # process dies: a run is redelivered instead of forgotten. Running
        # twice is safe (the executor holds a lease on the run in the DB).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_consumer": "worker.celery_app:QuickReconnectConsumer",
        "broker_connection_max_retries": None,  # retry a lost broker for ever (the default gives up after 100 tries)
        "task_default_queue": CONTROL_QUEUE,
        "task_routes": {
            EXECUTE_RUN: {"queue": RUNS_QUEUE},
            SCHEDULE_TICK: {"queue": CONTROL_QUEUE},
            JANITOR_TICK: {"queue": CONTROL_QUEUE},
            FORECAST_TICK: {"queue": CONTROL_QUEUE},
            WEBHOOK_TICK: {"queue": CONTROL_QUEUE},
        },
        # Ticks are idempotent and frequent: a stale one is worth nothing.
        "beat_schedule": {
            "schedule-tick": {"task": SCHEDULE_TICK, "schedule": settings.scheduler_tick_s, "options": {"expires": settings.scheduler_tick_s * 2}},
            "janitor-tick": {"task": JANITOR_TICK, "schedule": settings.janitor_tick_s, "options": {"expires": settings.janitor_tick_s * 2}},
            # The queue forecast every API replica reads (worker/control/forecast.py); one that waited
            # a whole interval is dropped, the next one is as good.
            "forecast-tick": {"task": FORECAST_TICK, "schedule": settings.queue_forecast_interval_s,
                              "options": {"expires": settings.queue_forecast_interval_s}},
            # Team webhooks (service/webhooks/send.py): what is due waits at most one more tick.
            "webhook-tick": {"task": WEBHOOK_TICK, "schedule": settings.webhook_tick_s, "options": {"expires": settings.webhook_tick_s * 2}},
        },
        "beat_schedule_filename": str(settings.home.resolve() / "celerybeat-schedule"),
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.broker_url.startswith("sqla+"):
        # The SQL transport polls its table, by default once a second, which
        # would add a second to every dispatch. It hands every transport option
        # to create_engine, so the interval is set on the class instead.
        from kombu.transport.sqlalchemy import Transport

        Transport.polling_interval = 0.1
    app = Celery("caddie", include=["worker.tasks"])  # imported by the worker at start
    app.conf.update(celery_config(settings))
    return app


celery_app = make_celery()


@worker_ready.connect
def _look_for_orphans(sender: object = None, **_: object) -> None:
    # A runs worker that (re)starts asks the janitor to look now: runs whose executor
    # was a process of this host that died (the worker it replaces) are dispatched
    # again at once, not after the stale window.
    try:
        queues = {q.name for q in sender.task_consumer.queues}  # type: ignore[attr-defined]  # a Celery consumer; None and others fall to except
    except AttributeError:
        return
    if RUNS_QUEUE in queues:
        try:
            celery_app.send_task(JANITOR_TICK, retry=False)
        except Exception:  # noqa: BLE001 (beat ticks anyway)
            pass


@worker_init.connect
def _exit_at_once_on_unrecoverable_error(sender: Any = None, **_: object) -> None:
    """A worker whose consumer died ("Unrecoverable error") exits now instead of waiting for its runs.

    Kombu can fail that way when the broker connection drops with a run's message
    unacknowledged (acks_late). Celery's warm shutdown then waits for every running
    task, so the worker takes no new run until its current ones end: a 3 s Redis
    outage idled slots for the length of a run. The runs' jobs do not depend on this
    process (each trainer runs under its own supervisor or node), so exiting at once
    is a worker killed: the supervisor restarts it and the restarted worker re-attaches
    to the runs (a dead holder on this host is taken over at once, worker.run.lease).
    """
    if sender is None:
        return
    stop = sender.stop

    def stop_or_exit(in_sighandler: bool = False, exitcode: int | None = None) -> None:
        failing = sys.exc_info()[1]
        if exitcode == EX_FAILURE and isinstance(failing, Exception):
            log.critical("the worker's consumer failed (%r); exiting now for the supervisor to restart it", failing)
            logging.shutdown()
            os._exit(EX_FAILURE)
        stop(in_sighandler=in_sighandler, exitcode=exitcode)

    sender.stop = stop_or_exit


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked pool child must not share the parent's database connections.
    from service.core.db import dispose_engines

    dispose_engines()
