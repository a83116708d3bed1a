"""A run's statuses and the edges between them (pure: no I/O): the one vocabulary the
service, the worker, the CLI and the web pages use. service/runs/lifecycle.py applies them.
It sits in core, beside the ``runs.status`` column it names, because billing and the queue
read it and the runs room reads them (a submit checks the quota, a run's page its forecast).

    QUEUED ──▶ PROVISIONING ──▶ RUNNING ──▶ SUCCEEDED | FAILED | CANCELLED | ABORTED_BEHIND
       │            │              │
       │            └──────────────┴──▶ QUEUED   (retry: preemption, no capacity; attempts+1)
       └──▶ CANCELLED | FAILED

ABORTED_BEHIND: stopped early by its own abort_if_behind rule (service.runs.early_abort),
its train loss too far behind the team's best at the rule's step.

"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    QUEUED = "QUEUED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    ABORTED_BEHIND = "ABORTED_BEHIND"

    def __str__(self) -> str:
        return self.value

TERMINAL: frozenset[RunStatus] = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.ABORTED_BEHIND})

# Holding a node: what the scheduler counts against capacity and the billing counts as used.
ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.PROVISIONING, RunStatus.RUNNING})
# The same as plain strings, for SQL filters and JSON.
TERMINAL_VALUES: tuple[str, ...] = tuple(s.value for s in RunStatus if s in TERMINAL)
ACTIVE_VALUES: tuple[str, ...] = tuple(s.value for s in RunStatus if s in ACTIVE)
ALL_VALUES: tuple[str, ...] = tuple(s.value for s in RunStatus)

ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.PROVISIONING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.PROVISIONING: frozenset({RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUEUED, RunStatus.ABORTED_BEHIND}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.ABORTED_BEHIND: frozenset(),
}


class IllegalTransition(Exception):
    """A status change the state machine does not allow (or a lost race for it)."""

    def __init__(self, frm: str, to: str, detail: str = ""):
        self.frm, self.to = str(frm), str(to)
        super().__init__(detail or f"cannot go from {self.frm} to {self.to}")


def is_terminal(status: str) -> bool:
    return RunStatus(status) in TERMINAL


def is_retry(frm: str, to: str) -> bool:
    """Back to the queue after the run had left it (preemption, capacity error)."""
    return RunStatus(to) is RunStatus.QUEUED and RunStatus(frm) in (RunStatus.PROVISIONING, RunStatus.RUNNING)


# The reason of a requeue whose job's node died under it (preemption, hardware) starts with this:
# such a run is relaunched on a fresh node at once, with no retry wait (service.queue.state).
NODE_LOST = "node lost"


def is_node_lost(reason: str | None) -> bool:
    return (reason or "").startswith(NODE_LOST)


def check_transition(frm: str, to: str) -> None:
    """Raise IllegalTransition unless ``frm -> to`` is an allowed edge."""
    try:
        f, t = RunStatus(frm), RunStatus(to)
    except ValueError as exc:
        raise IllegalTransition(frm, to, f"unknown status: {exc}") from None
    if t not in ALLOWED[f]:
        raise IllegalTransition(f, t)


class ClusterStatus(str, Enum):
    """A node's row (clusters.status), written only by worker/run/clusters.py: UP while a run
    holds it, IDLE while kept warm, DOWN once torn down."""

    UP = "UP"
    IDLE = "IDLE"
    DOWN = "DOWN"

    def __str__(self) -> str:
        return self.value
