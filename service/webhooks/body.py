"""The JSON a webhook receives (pure: figures in, a dict out).

Slack's incoming webhooks read ``text``; Discord's read ``content`` (and ``allowed_mentions``,
set so that a run named "@everyone" pings nobody); any other tool reads the structured fields:
``event``, ``team``, the subject's id (``run_id``, ``group``, ``sweep_id``), ``status``,
``val_bpb``, ``url``. Nothing secret goes in: no token, no config or environment values, no log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Events (the ``event`` field).
RUN_FINISHED = "run.finished"  # SUCCEEDED, or ABORTED_BEHIND (stopped by its own early-abort rule)
RUN_FAILED = "run.failed"
GROUP_FINISHED = "group.finished"  # no run of the group left queued or running, at least one counted
GROUP_FAILED = "group.failed"  # ... and none counted (every run ended badly)
GROUP_RECORD_ELIGIBLE = "group.record_eligible"  # once per group
SWEEP_FINISHED = "sweep.finished"
SWEEP_FAILED = "sweep.failed"  # done with no complete trial
EVENTS = (RUN_FINISHED, RUN_FAILED, GROUP_FINISHED, GROUP_FAILED, GROUP_RECORD_ELIGIBLE, SWEEP_FINISHED, SWEEP_FAILED)

MAX_TEXT_CHARS = 1900  # Discord refuses content past 2,000 characters
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class Notice:
    """What happened, in the figures a body shows."""

    event: str
    team: str
    kind: str  # run | group | sweep
    ref: str  # the run's or sweep's id, the group's key
    name: str
    status: str
    val_bpb: float | None = None
    reason: str = ""
    path: str = ""  # the web page, e.g. /runs/12


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); & starts an entity.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def headline(n: Notice) -> str:
    what = {"run": f"run {n.ref}", "group": f"group {n.ref[:12]}", "sweep": f"sweep {n.ref}"}[n.kind]
    verb = {RUN_FINISHED: "finished", RUN_FAILED: "failed", GROUP_FINISHED: "finished", GROUP_FAILED: "failed",
            GROUP_RECORD_ELIGIBLE: "is record-eligible", SWEEP_FINISHED: "finished", SWEEP_FAILED: "failed"}.get(n.event, n.event)
    line = f"[{n.team}] {what} ({n.name}) {verb}: {n.status}"
    if n.val_bpb is not None:
        line += f", val_bpb {n.val_bpb:.4f}"
    if n.reason:
        line += f" ({n.reason[:MAX_REASON_CHARS]})"
    return line


def body_of(n: Notice, public_url: str = "") -> dict[str, Any]:
    """The POST body for ``n``; ``public_url``: the web pages' address, so ``url`` is a link."""
    url = (public_url.rstrip("/") + n.path) if n.path else None
    text = headline(n) + (f" {url}" if url else "")
    ids: dict[str, Any] = {"group": n.ref} if n.kind == "group" else {f"{n.kind}_id": int(n.ref)}
    return {
        "text": _slack_escape(text)[:MAX_TEXT_CHARS],
        "content": text[:MAX_TEXT_CHARS],
        "allowed_mentions": {"parse": []},
        "event": n.event,
        "team": n.team,
        **ids,
        "name": n.name,
        "status": n.status,
        "val_bpb": n.val_bpb,
        "reason": n.reason[:MAX_REASON_CHARS],
        "url": url,
    }
