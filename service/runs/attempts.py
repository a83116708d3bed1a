"""A run's attempts, one row each: what GET /runs/{id} lists and the run page shows (issue 21).

Nothing is stored for them: an attempt is the stretch of the run's events from a PROVISIONING to
the next QUEUED or final status, exactly as the billing cuts it (service.billing.accounting's
``billed_attempts``), and its billed GPU-seconds are the billing's own intervals of it. Where it
ran and how it ended are read from those events' reasons, which the executor writes:
``job 3 on caddie-h100x8-t1-5; ...; node: 8x NVIDIA H100 80GB HBM3 (H100:8)`` and ``node lost: ...``.
Its launch key is the executor's: ``run-<id>-attempt-<n>``. Everything above ``load_attempts`` is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.billing.accounting import Transition, billed_attempts, billed_hardware, phase_pieces
from service.core.hardware import gpus_of
from service.core.models import Run, RunEvent
from service.core.status import TERMINAL_VALUES, RunStatus, is_node_lost

QUEUED, PROVISIONING, RUNNING = RunStatus.QUEUED.value, RunStatus.PROVISIONING.value, RunStatus.RUNNING.value
# "job 3 on caddie-h100x8-5", "adopted its launch request R on X, ...", "re-attached to job 3 on X": the node's cluster
_CLUSTER = re.compile(r"\bon ([A-Za-z0-9][A-Za-z0-9._:/-]*[A-Za-z0-9])")
_NODE = re.compile(r"\bnode: ([^;]+)")
# How an attempt that went back to the queue ended, by its requeue's reason (worker.run.executor)
_NO_CAPACITY = ("ResourcesUnavailableError", "no capacity", "no node:")


class Event(Protocol):
    """What is read of a run event (service.core.models.RunEvent)."""

    @property
    def at(self) -> datetime: ...
    @property
    def from_status(self) -> str | None: ...
    @property
    def to_status(self) -> str: ...
    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class RunAttempt:
    """One attempt of a run: one launch, billed from its PROVISIONING to its node's release."""

    attempt: int = field(metadata={"description": "1, 2, ...: the launch's number"})
    launch_key: str = field(metadata={"description": "run-<id>-attempt-<n>: names its job (SkyPilot: caddie-run-<id>-attempt-<n>) and run folder"})
    cluster: str | None = field(metadata={"description": "the node (cluster) its job ran on; null: it never got one"})
    node: str | None = field(metadata={"description": "what that node reported at launch (GPUs, model); null: not reported"})
    started_at: datetime = field(metadata={"description": "PROVISIONING: billed from here"})
    running_at: datetime | None = field(metadata={"description": "its job was launched (RUNNING); null: it never was"})
    ended_at: datetime | None = field(metadata={"description": "its node was released (back to the queue or the run's end); null: still going"})
    ended: str | None = field(metadata={"description": "how it ended: node_lost (preempted or dead node, relaunched on a fresh one), no_capacity, "
                                                       "requeued (another failed launch), or the run's final status in lower case "
                                                       "(succeeded, failed, cancelled, aborted_behind); null: still going"})  # fmt: skip
    reason: str = field(metadata={"description": "the reason of the event that ended it ('' while it goes on)"})
    billed_gpu_seconds: float = field(metadata={"description": "GPU-seconds billed for it (GPUs x its time from PROVISIONING to release, or to now)"})


def how_it_ended(to_status: str, reason: str) -> str:
    """node_lost / no_capacity / requeued for a return to the queue, else the final status in lower case."""
    if to_status != QUEUED:
        return to_status.lower()
    if is_node_lost(reason):
        return "node_lost"
    return "no_capacity" if any(s in reason for s in _NO_CAPACITY) else "requeued"


def _segments(events: Sequence[Event]) -> list[list[Event]]:
    """The events of each attempt, cut where ``billed_attempts`` cuts them (a PROVISIONING opens one, the
    next QUEUED or final status closes it)."""
    out: list[list[Event]] = []
    current: list[Event] | None = None
    for e in events:
        if current is None:
            if e.to_status == PROVISIONING:
                current = [e]
            continue
        current.append(e)
        if e.to_status == QUEUED or e.to_status in TERMINAL_VALUES:
            out.append(current)
            current = None
    if current is not None:
        out.append(current)
    return out


def run_attempts(run_id: int, hardware: str, node_hardware: Mapping[str, Any] | None, events: Sequence[Event], now: datetime) -> list[RunAttempt]:
    """The attempts of run ``run_id`` from its events in the order they happened, as billed on ``hardware``
    (the billing's: what its node reported, else what it asked for)."""
    gpus = gpus_of(billed_hardware(hardware, node_hardware))
    billed = billed_attempts([Transition(e.at, e.to_status) for e in events])
    out = []
    for n, (segment, a) in enumerate(zip(_segments(events), billed, strict=True), start=1):
        launched = next((e for e in segment if e.to_status == RUNNING and e.from_status != RUNNING), None)
        said = launched.reason if launched is not None else ""
        cluster, node = _CLUSTER.search(said), _NODE.search(said)
        last = segment[-1] if a.released_at is not None else None
        seconds = sum((p.end - p.start).total_seconds() for p in phase_pieces([a], None, None, now))
        out.append(RunAttempt(
            attempt=n, launch_key=f"run-{run_id}-attempt-{n}", cluster=cluster[1] if cluster else None, node=node[1].strip() if node else None,
            started_at=a.billed_from, running_at=a.running_from, ended_at=a.released_at,
            ended=how_it_ended(last.to_status, last.reason or "") if last is not None else None, reason=(last.reason or "") if last is not None else "",
            billed_gpu_seconds=round(gpus * seconds, 3),
        ))  # fmt: skip
    return out


# --- I/O ---------------------------------------------------------------------------------
def load_attempts(session: Session, run: Run, now: datetime) -> list[RunAttempt]:
    """The attempts of ``run`` (one read of its events; none for a run that never left the queue)."""
    if run.status == QUEUED and not run.attempts:
        return []
    events = list(session.scalars(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id)))
    return run_attempts(run.id, run.hardware, run.node_hardware, events, now)
