"""Celery tasks: thin wrappers that pass run ids and call plain functions.

Every task is safe to run twice: the database says what is already done.
"""

from __future__ import annotations

import logging
import time

from celery import Celery

from service.sweeps.store import advance_sweeps_safely
from service.webhooks import outbox  # noqa: F401 (a run's end queues the team's webhook: outbox listens on service.runs.lifecycle)
from service.webhooks.send import deliver_due_safely
from worker.celery_app import EXECUTE_RUN, FORECAST_TICK, JANITOR_TICK, RUNS_QUEUE, SCHEDULE_TICK, WEBHOOK_TICK, celery_app
from worker.control import dispatch as scheduler, forecast, janitor
from worker.run import executor
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


def enqueue_run(run_id: int) -> None:
    """Ask a worker on the `runs` queue to drive run `run_id`."""
    celery_app.send_task(EXECUTE_RUN, args=[int(run_id)], retry=False)


def runs_queue_length(app: Celery = celery_app, queue: str = RUNS_QUEUE) -> int | None:
    """Messages waiting in the `runs` queue (0 when the broker has no such queue); None if the broker cannot be asked."""
    try:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:  # noqa: BLE001
        if "NOT_FOUND" in str(exc):  # Redis drops an empty list, and the queue with it
            return 0
        log.warning("cannot count the runs queue: %s", exc)
        return None


# Ticks asked for within this window of each other share one tick (sent this much later).
TICK_DEBOUNCE_S = 1.0
_tick_debounce = scheduler.TickDebounce(TICK_DEBOUNCE_S, time.monotonic)
_tick_gate = scheduler.TickGate()  # in the control worker: skips a requested tick that a later-started one covered


def request_schedule_tick() -> None:
    """Ask for a scheduler tick soon (after a submit, or when a run frees its slot); requests
    in one window coalesce into one tick, which expires if a backlog holds it past beat's next. The tick
    carries when it was asked for, so the control worker skips it if another tick started since."""
    _tick_debounce.request(
        lambda countdown: celery_app.send_task(
            SCHEDULE_TICK, kwargs={"requested_at": time.time()}, retry=False, countdown=countdown, expires=countdown + 10.0
        )
    )


@celery_app.task(name=EXECUTE_RUN)
def execute_run(run_id: int) -> str:
    rt = get_runtime()
    outcome = executor.execute_run(int(run_id), launcher=rt.launcher, session_factory=rt.session_factory, store=rt.store, settings=rt.settings)
    log.info("%s", outcome)
    try:
        request_schedule_tick()  # a slot may have freed up
    except Exception:  # noqa: BLE001 (beat ticks anyway)
        log.warning("could not request a scheduler tick", exc_info=True)
    return outcome


# Ticks are acknowledged on receipt: a lost tick costs nothing (the next one
# comes within seconds), and an unacknowledged message in flight is what
# trips Kombu when the broker connection drops (the worker exits and its
# supervisor restarts it).
@celery_app.task(name=SCHEDULE_TICK, acks_late=False)
def schedule_tick(requested_at: float | None = None) -> list[int]:
    if not _tick_gate.admit(requested_at, time.time()):
        return []  # a tick that started after this one was asked for has seen what it was asked for
    try:
        rt = get_runtime()
        advance_sweeps_safely(rt.session_factory)  # sweeps: end, prune and start trials before this tick dispatches their runs
        with rt.session_factory() as session:
            return scheduler.dispatch_due_runs(
                session,
                capacity=rt.capacity,
                enqueue=enqueue_run,
                budget_period=rt.budget_period,
                expected_run_hours=rt.settings.expected_run_hours,
                retry_backoff_s=rt.settings.retry_backoff_s,
                run_overhead_s=rt.settings.run_overhead_s,
            )
    except Exception:
        _tick_gate.forget()
        raise


@celery_app.task(name=JANITOR_TICK, acks_late=False)
def janitor_tick() -> int:
    rt = get_runtime()
    with rt.session_factory() as session:
        return len(janitor.janitor_pass(session, launcher=rt.launcher, settings=rt.settings, enqueue=enqueue_run, queued_messages=runs_queue_length,
                                           store=rt.store))


@celery_app.task(name=FORECAST_TICK, acks_late=False)
def forecast_tick() -> int:
    rt = get_runtime()
    return forecast.refresh_forecast_niced(rt.session_factory, rt.settings)


@celery_app.task(name=WEBHOOK_TICK, acks_late=False)
def webhook_tick() -> int:
    """Send the team notifications that are due (retries with backoff; see service/webhooks/send.py)."""
    rt = get_runtime()
    return deliver_due_safely(rt.session_factory, rt.settings)
