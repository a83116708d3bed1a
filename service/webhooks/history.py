"""A team's recent notifications and what became of each (the web's deliveries page)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import WebhookDelivery

PAGE_ROWS = 100


@dataclass(frozen=True)
class DeliveryView:
    id: int
    event: str
    what: str  # "run 12", "group ab12cd34", "sweep 3": what the notification told of
    host: str | None  # the host of the last try (never the URL's path)
    status: str  # pending | sent | failed
    status_code: int | None  # the last answer's HTTP status; None: no answer (yet)
    attempts: int
    error: str
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None  # pending only


def recent_deliveries(session: Session, team_id: int, limit: int = PAGE_ROWS) -> list[DeliveryView]:
    """The team's latest ``limit`` notifications, newest first."""
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.team_id == team_id).order_by(WebhookDelivery.id.desc()).limit(limit))
    return [
        DeliveryView(r.id, r.event, _what(r.body), r.host, r.status, r.status_code, r.attempts, r.last_error or "", r.created_at, r.sent_at,
                     r.next_attempt_at if r.status == "pending" else None)  # fmt: skip
        for r in rows
    ]


def _what(body: object) -> str:
    if not isinstance(body, dict):
        return ""
    for key, label in (("run_id", "run"), ("group", "group"), ("sweep_id", "sweep")):
        if body.get(key) is not None:
            ref = str(body[key])
            return f"{label} {ref[:12] if key == 'group' else ref}"
    return ""
