"""A team's webhook deliveries a page at a time: GET /teams/{name}/deliveries with a cursor (keyset on the id),
on both databases (the web page's paging: tests/web/test_team_webhook_page.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Team, WebhookDelivery, utcnow
from tests.world import World


def queue_deliveries(session: Session, team: str, n: int) -> list[int]:
    team_id = session.scalar(select(Team.id).where(Team.name == team))
    rows = [WebhookDelivery(team_id=team_id, event="run.finished", body={"run_id": i}, status="sent", attempts=1, next_attempt_at=utcnow(),
                            last_error="", host="hooks.example.org", status_code=204) for i in range(n)]  # fmt: skip
    session.add_all(rows)
    session.commit()
    return [r.id for r in rows]


def test_the_deliveries_api_pages_with_a_cursor(client: TestClient, world: World, session: Session) -> None:
    made = queue_deliveries(session, "team-a", 5)
    queue_deliveries(session, "team-b", 2)  # another team's: never on team-a's pages
    seen: list[int] = []
    cursor, pages = None, 0
    while True:
        r = client.get("/api/v1/teams/team-a/deliveries", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=world.h("alice"))
        assert r.status_code == 200, r.text
        seen += [d["id"] for d in r.json()["items"]]
        cursor, pages = r.json()["next_cursor"], pages + 1
        if cursor is None:
            break
    assert seen == made[::-1] and pages == 3  # newest first, each once
    first = client.get("/api/v1/teams/team-a/deliveries", params={"limit": 5}, headers=world.h("alice")).json()
    assert first["next_cursor"] is None and first["items"][0]["what"] == "run 4" and first["items"][0]["status_code"] == 204
    assert client.get("/api/v1/teams/team-b/deliveries", headers=world.h("alice")).status_code == 404  # not alice's team
    assert client.get("/api/v1/teams/team-a/deliveries", params={"limit": 201}, headers=world.h("alice")).status_code == 422
    for bad in ("garbage!", "cjEw", "dzA", "w5"):  # not base64; a /runs cursor ("r10"); id 0; not encoded
        r = client.get("/api/v1/teams/team-a/deliveries", params={"cursor": bad}, headers=world.h("alice"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"], (bad, r.text)
