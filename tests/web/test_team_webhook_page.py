"""The teams page shows the team's webhook (scheme and host only) and lets team admins set it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Team
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
