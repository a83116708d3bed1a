"""The teams page shows the team's webhook (scheme and host only) and lets team admins set it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Team, WebhookDelivery, utcnow
from service.webhooks.history import PAGE_ROWS
from tests.webhooks.test_deliveries_paging import queue_deliveries
from tests.world import World


def test_team_admins_set_the_webhook_on_the_teams_page(world: World, browser_for, session: Session) -> None:  # noqa: ANN001
    aaron = browser_for(world.tokens["aaron"])
    assert "no webhook" in aaron.c.get("/teams").text
    assert aaron.post("/teams/team-a/webhook", {"url": "https://1.1.1.1/services/T0/secret"}, csrf_from="/teams").status_code == 303
    page = aaron.c.get("/teams").text
    assert "https://1.1.1.1/…" in page and "secret" not in page  # the path is the endpoint's secret
    alice = browser_for(world.tokens["alice"])  # a member sees it, cannot change it
    assert "https://1.1.1.1/…" in alice.c.get("/teams").text and 'action="/teams/team-a/webhook"' not in alice.c.get("/teams").text
    assert alice.post("/teams/team-a/webhook", {"url": ""}, csrf_from="/teams").status_code == 404
    refused = aaron.post("/teams/team-a/webhook", {"url": "http://10.0.0.1/x"}, csrf_from="/teams")  # inside the deployment
    assert refused.status_code == 400 and "inside the deployment" in refused.text
    session.expire_all()
    assert session.scalar(select(Team.webhook_url).where(Team.name == "team-a")) == "https://1.1.1.1/services/T0/secret"
    assert aaron.post("/teams/team-a/webhook", {"url": ""}, csrf_from="/teams").status_code == 303  # empty: removed
    assert "no webhook" in aaron.c.get("/teams").text


def test_the_deliveries_page_lists_the_teams_notifications(world: World, browser_for, session: Session) -> None:  # noqa: ANN001
    team_a = session.scalar(select(Team).where(Team.name == "team-a"))
    team_b = session.scalar(select(Team).where(Team.name == "team-b"))
    now = utcnow()
    session.add_all([
        WebhookDelivery(team_id=team_a.id, event="run.finished", body={"run_id": 7}, status="sent", attempts=1, next_attempt_at=now, last_error="",
                        host="hooks.example.org", status_code=204, sent_at=now),
        WebhookDelivery(team_id=team_a.id, event="group.finished", body={"group": "abcdef0123456789"}, status="failed", attempts=5,
                        next_attempt_at=now, last_error="gave up after 5 tries: HTTP 500 from hooks.example.org", host="hooks.example.org",
                        status_code=500),
        WebhookDelivery(team_id=team_b.id, event="sweep.finished", body={"sweep_id": 3}, status="pending", attempts=0, next_attempt_at=now,
                        last_error="", host="b-only.example.org"),
    ])  # fmt: skip
    session.commit()
    alice = browser_for(world.tokens["alice"])  # a member of team A
    assert 'href="/teams/team-a/deliveries"' in alice.c.get("/teams").text
    page = alice.c.get("/teams/team-a/deliveries")
    assert page.status_code == 200
    html = page.text
    assert html.index("group.finished") < html.index("run.finished")  # newest first
    for shown in ("run 7", "group abcdef012345", "hooks.example.org", ">204<", ">500<", "gave up after 5 tries: HTTP 500", ">5<"):
        assert shown in html, shown
    assert "b-only.example.org" not in html and "sweep.finished" not in html  # another team's
    assert alice.c.get("/teams/team-b/deliveries").status_code == 404  # not alice's team
    assert alice.c.get("/teams/nope/deliveries").status_code == 404
    bob = browser_for(world.tokens["bob"]).c.get("/teams/team-b/deliveries").text
    assert "b-only.example.org" in bob and "sweep 3" in bob and "next try" in bob and "run.finished" not in bob


def test_the_deliveries_page_pages(world: World, browser_for, session: Session) -> None:  # noqa: ANN001
    queue_deliveries(session, "team-a", PAGE_ROWS + 3)
    alice = browser_for(world.tokens["alice"])
    first = alice.c.get("/teams/team-a/deliveries").text
    assert first.count('class="delivery-sent"') == PAGE_ROWS and f">run {PAGE_ROWS + 2}<" in first and "« first page" not in first
    next_url = _next(first)
    second = alice.c.get(next_url).text
    assert second.count('class="delivery-sent"') == 3 and ">run 0<" in second and ">run 3<" not in second
    assert 'id="next-page"' not in second and 'href="/teams/team-a/deliveries"' in second  # the last page links to the first
    assert alice.c.get("/teams/team-a/deliveries?cursor=garbage!").status_code in (400, 422)


def _next(html: str) -> str:
    anchor = html[: html.index('id="next-page"')]
    return anchor[anchor.rindex('href="') + 6 :].split('"')[0].replace("&amp;", "&")
