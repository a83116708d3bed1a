"""A team's notifications and what became of each, newest first, a page at a time
(GET /teams/{name}/deliveries and the web's deliveries page)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.bodies import ID_MAX
from service.core.errors import InvalidInput, Issue
from service.core.models import WebhookDelivery

PAGE_ROWS = 100  # the web page's


# The deliveries page and GET /teams/{name}/deliveries show this class: a field's description
# (metadata) is what the API's schema says of it.
@dataclass(frozen=True)
class DeliveryView:
    """One notification to the team's webhook: what it told of, and how sending it went."""

    id: int
    event: str = field(metadata={"description": "run.finished, group.record_eligible, sweep.finished, ..."})
    what: str = field(metadata={"description": "what it told of: 'run 12', 'group ab12cd34ef56', 'sweep 3'"})
    host: str | None = field(metadata={"description": "the host of the last try (never the URL's path, a chat webhook's secret)"})
    status: str = field(metadata={"description": "pending, sent or failed"})
    status_code: int | None = field(metadata={"description": "the last answer's HTTP status; null: no answer (yet)"})
    attempts: int
    error: str = field(metadata={"description": "the last try's error"})
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = field(metadata={"description": "pending only: when it is tried again"})


def encode_cursor(delivery_id: int) -> str:
    """The next page starts below this delivery (its own prefix: a /runs or /sweeps cursor is not one)."""
    return base64.urlsafe_b64encode(f"w{delivery_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("w"):
            raise ValueError(raw)
        delivery_id = int(raw[1:])
        if not 1 <= delivery_id <= ID_MAX:
            raise ValueError(raw)
        return delivery_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput([Issue(("query", "cursor"), "not a cursor from a previous page of deliveries", cursor)]) from None


def deliveries(session: Session, team_id: int, *, limit: int = PAGE_ROWS, cursor: str | None = None) -> tuple[list[DeliveryView], str | None]:
    """The team's notifications, newest first, ``limit`` a page, and the cursor of the next page (None: the last).

    Keyset on the id, so a notification queued while paging never shifts a page."""
    query = select(WebhookDelivery).where(WebhookDelivery.team_id == team_id).order_by(WebhookDelivery.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(WebhookDelivery.id < decode_cursor(cursor))
    rows = list(session.scalars(query))
    views = [
        DeliveryView(r.id, r.event, _what(r.body), r.host, r.status, r.status_code, r.attempts, r.last_error or "", r.created_at, r.sent_at,
                     r.next_attempt_at if r.status == "pending" else None)  # fmt: skip
        for r in rows[:limit]
    ]
    return views, encode_cursor(rows[limit - 1].id) if len(rows) > limit else None


def _what(body: object) -> str:
    if not isinstance(body, dict):
        return ""
    for key, label in (("run_id", "run"), ("group", "group"), ("sweep_id", "sweep")):
        if body.get(key) is not None:
            ref = str(body[key])
            return f"{label} {ref[:12] if key == 'group' else ref}"
    return ""
