"""Who drives a run now: the lease on runs.worker_task_id, and transient-DB retries.

    worker_task_id       heartbeat_at         meaning
    ──────────────       ────────────         ───────────────────────────────────────
    NULL                 any                  nobody drives it; any executor may claim it
    "dispatched@<t>"     when it was sent     a message for it is on its way (scheduler,
                                              janitor); the executor that gets it claims it
    "<host>:<pid>:<id>"  renewed every beat   that executor drives it; once the heartbeat is
                                              older than the stale window anyone may take over,
                                              and at once if <host> is this host and <pid> is dead

Every status change of a PROVISIONING/RUNNING run is made by the lease holder
through ``service.runs.lifecycle.transition(..., owner=token)``: a compare-and-set on
status and token together, so an executor that lost its lease changes nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import psutil
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from service.core.db import rowcount
from service.core.models import Run, utcnow
from service.core.status import RunStatus

log = logging.getLogger(__name__)

ACTIVE = (RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)
DISPATCHED = "dispatched@"  # worker_task_id of a run whose execute message was sent and not yet taken

SessionFactory = Callable[[], Session]
T = TypeVar("T")


def dispatch_mark(now: datetime) -> str:
    """The worker_task_id that says "a message for this run is on its way" (sent at `now`)."""
    return f"{DISPATCHED}{now:%Y-%m-%dT%H:%M:%S}"


def is_dispatch_mark(worker_task_id: str | None) -> bool:
    return bool(worker_task_id) and str(worker_task_id).startswith(DISPATCHED)


def holder_gone(worker_task_id: str | None) -> bool:
    """True if the lease holder named by `worker_task_id` ran on this host and its process is dead.

    A worker killed outright (OOM, kill -9) leaves a fresh-looking heartbeat behind;
    on its own host that need not be waited out. Another host's holder (another
    container, another machine) is never judged here: its staleness decides.
    """
    if not worker_task_id or is_dispatch_mark(worker_task_id):
        return False
    host, _, rest = str(worker_task_id).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


# --- transient database errors ---------------------------------------------------------------
def is_transient_db_error(exc: BaseException) -> bool:
    """A lost connection, a restarting server, a failover: worth trying again."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], T], *, what: str, deadline_s: float = 60.0, first_wait_s: float = 0.2, max_wait_s: float = 5.0) -> T:
    """fn() again after a transient DB error, waiting 0.2 s, 0.4 s, ... (at most max_wait_s),
    until deadline_s has passed; then the error is raised. Other errors go straight through.

    `fn` must open its own session, so each try starts from a fresh connection,
    and must be safe to repeat (a commit may have landed before its error came back).
    """
    end = time.monotonic() + deadline_s
    wait = first_wait_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient_db_error(exc) or time.monotonic() + wait > end:
                raise
            log.warning("%s: transient database error, trying again in %.1f s: %s", what, wait, str(exc).splitlines()[0][:200])
            time.sleep(wait)
            wait = min(max_wait_s, wait * 2)


# --- the lease --------------------------------------------------------------------------------
class Lease:
    """The right to drive one run: runs.worker_task_id = our token, kept alive by
    renewing runs.heartbeat_at from a background thread every heartbeat_s."""

    def __init__(self, session_factory: SessionFactory, run_id: int, heartbeat_s: float, stale_s: float) -> None:
        self.session_factory = session_factory
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self) -> bool:
        """Take the lease if nobody holds it, a dispatch message is what brought us, or its holder
        stopped renewing it (or is a dead process of this host: ``holder_gone``)."""
        now = utcnow()
        with self.session_factory() as session:
            free = (
                (Run.worker_task_id.is_(None))
                | (Run.worker_task_id.startswith(DISPATCHED, autoescape=True))
                | (Run.heartbeat_at.is_(None))
                | (Run.heartbeat_at < now - timedelta(seconds=self.stale_s))
            )
            holder = session.scalar(select(Run.worker_task_id).where(Run.id == self.run_id))
            if holder_gone(holder):
                free = free | (Run.worker_task_id == holder)
            result = session.execute(
                update(Run).where(Run.id == self.run_id, Run.status.in_(ACTIVE), free).values(worker_task_id=self.token, heartbeat_at=now),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            return rowcount(result) == 1

    def renew(self) -> bool:
        with self.session_factory() as session:
            result = session.execute(
                update(Run)
                .where(Run.id == self.run_id, Run.worker_task_id == self.token, Run.status.in_(ACTIVE))
                .values(heartbeat_at=utcnow()),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            return rowcount(result) == 1

    def release(self) -> None:
        """Give the lease up now (an error we cannot handle here): the janitor dispatches the run again at its next round."""
        with self.session_factory() as session:
            session.execute(
                update(Run).where(Run.id == self.run_id, Run.worker_task_id == self.token).values(worker_task_id=None, heartbeat_at=None),
                execution_options={"synchronize_session": False},
            )
            session.commit()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-run-{self.run_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    self.lost.set()  # finished elsewhere or taken over: stop driving
                    return
            except Exception:  # noqa: BLE001 (a DB hiccup: try again next beat)
                log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)
