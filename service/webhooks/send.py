"""The control worker's webhook tick: POST the notifications that are due, retry, give up.

Each due row is claimed first (its try counted and its next try pushed past this one's timeout,
compare-and-set on ``attempts``), committed, then sent: two ticks at once never send one row
twice, and a worker that dies mid-send leaves the row to be tried again. The URL is read from the
row's own team at send time and checked again (scheme, and with CADDIE_WEBHOOK_ALLOW_PRIVATE off
the addresses the host resolves to now); the host is resolved once and the POST connects to the
checked address (service.teams.webhook_url.pin), so a second resolution cannot swap it. Redirects are not
followed: one could lead inside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.core.db import rowcount
from service.core.models import Team, WebhookDelivery, utcnow
from service.core.settings import Settings
from service.teams.webhook_url import Resolver, pin, resolve

log = logging.getLogger(__name__)

PENDING, SENT, FAILED = "pending", "sent", "failed"
PRUNE_BATCH = 5000  # rows deleted per janitor round: a backlog drains over a few rounds, never one long transaction
MAX_ERROR_CHARS = 500
USER_AGENT = "caddie-webhook/1"


def retry_delay_s(attempts: int, backoff_s: float) -> float:
    """Wait before the try after ``attempts`` failed ones: backoff_s * 2**(attempts-1)."""
    return backoff_s * 2 ** max(attempts - 1, 0)


def deliver_due(session: Session, settings: Settings, *, now: datetime | None = None, transport: httpx.BaseTransport | None = None,
                resolver: Resolver = resolve) -> int:
    """Send up to ``settings.webhook_batch`` due notifications; returns how many were sent (2xx).
    ``resolver``: how host names are resolved (tests give their own)."""
    now = now or utcnow()
    due = session.scalars(select(WebhookDelivery).where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
                          .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(settings.webhook_batch)).all()  # fmt: skip
    sent = 0
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, transport=transport, headers={"User-Agent": USER_AGENT}) as client:
        for row in due:
            attempt = row.attempts + 1
            claim = (update(WebhookDelivery).where(WebhookDelivery.id == row.id, WebhookDelivery.status == PENDING, WebhookDelivery.attempts == row.attempts)
                     .values(attempts=attempt, next_attempt_at=now + timedelta(seconds=3 * settings.webhook_timeout_s)))  # fmt: skip
            if rowcount(session.execute(claim, execution_options={"synchronize_session": False})) != 1:
                session.rollback()
                continue  # another tick has it
            url = session.scalar(select(Team.webhook_url).where(Team.id == row.team_id))
            body, team_id, row_id = row.body, row.team_id, row.id
            session.commit()
            tried = Try("the team has no webhook now") if not url else _post(client, url, body, settings, resolver)
            error = tried.error
            done = error is None
            values: dict[str, Any]
            if done:
                values = {"status": SENT, "sent_at": utcnow(), "last_error": ""}
                sent += 1
            elif not url or attempt >= settings.webhook_max_attempts:
                values = {"status": FAILED, "last_error": f"gave up after {attempt} tries: {error}"[:MAX_ERROR_CHARS]}
            else:
                values = {"last_error": (error or "")[:MAX_ERROR_CHARS], "next_attempt_at": utcnow() + timedelta(seconds=retry_delay_s(attempt, settings.webhook_backoff_s))}
            values.update(host=tried.host, status_code=tried.status_code)
            session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row_id).values(**values), execution_options={"synchronize_session": False})
            session.commit()
            if not done:
                log.info("webhook of team %s, notification %s, try %s: %s", team_id, row_id, attempt, error)
    return sent


@dataclass(frozen=True)
class Try:
    """What one POST came to: ``error`` None if the endpoint took it; the host tried (None: none) and
    the HTTP status it answered (None: no answer)."""

    error: str | None
    host: str | None = None
    status_code: int | None = None


def _post(client: httpx.Client, url: str, body: dict[str, Any], settings: Settings, resolver: Resolver) -> Try:
    """POST ``body`` (never naming the URL's path in an error: it is the endpoint's secret)."""
    try:
        name = (urlsplit(url).hostname or "")[:255] or None
    except ValueError:  # a URL urlsplit cannot read: pin says why below
        name = None
    try:
        to = pin(url, allow_private=settings.webhook_allow_private, resolver=resolver)
    except ValueError as exc:  # BadWebhookUrl, or a URL urlsplit cannot read
        return Try(f"URL refused: {exc}", name)
    host = to.host if to.host == to.address else f"{to.host} ({to.address})"
    extensions = {"sni_hostname": to.sni_hostname} if to.sni_hostname else None
    try:
        # Streamed and never read: a huge answer costs nothing.
        with client.stream("POST", to.url, json=body, headers={"Host": to.host_header}, extensions=extensions) as response:
            code = response.status_code
            if 200 <= code < 300:
                return Try(None, name, code)
            if 300 <= code < 400:
                return Try(f"HTTP {code} from {host}: a redirect (not followed)", name, code)
            return Try(f"HTTP {code} from {host}", name, code)
    except httpx.TimeoutException:
        return Try(f"no answer from {host} within {settings.webhook_timeout_s:g} s", name)
    except httpx.HTTPError as exc:
        return Try(f"{type(exc).__name__} from {host}: {str(exc).replace(to.url, to.host).replace(url, to.host)}", name)


def prune_deliveries(session: Session, *, days: float, now: datetime) -> int:
    """Delete sent and failed notifications queued more than ``days`` ago (CADDIE_WEBHOOK_RETENTION_DAYS;
    0 keeps them for ever); pending ones stay whatever their age. Returns how many went; commits."""
    if days <= 0:
        return 0
    cutoff = now - timedelta(days=days)
    ids = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.status.in_((SENT, FAILED)), WebhookDelivery.created_at < cutoff)
                          .order_by(WebhookDelivery.id).limit(PRUNE_BATCH)).all()  # fmt: skip
    if ids:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)), execution_options={"synchronize_session": False})
        session.commit()
        log.info("webhooks: pruned %d notifications queued before %s", len(ids), cutoff)
    return len(ids)


def deliver_due_safely(session_factory: Any, settings: Settings) -> int:
    """The worker's call (beat's caddie.webhook_tick): a failing tick is logged; the next one tries again."""
    try:
        with session_factory() as session:
            return deliver_due(session, settings)
    except Exception:  # noqa: BLE001
        log.exception("webhooks: the tick failed")
        return 0
