"""`caddie team webhook`: a team admin sets and removes the team's webhook; members see its host only."""

from __future__ import annotations

from tests.cli.conftest import Caddie, api_get


def test_a_team_admin_sets_and_removes_the_webhook(caddie: Caddie) -> None:
    out = caddie.ok("team", "webhook", "golfers", "https://1.1.1.1/services/T0/secret").stdout
    assert "golfers: notifications go to https://1.1.1.1/…" in out and "secret" not in out
    assert "webhook https://1.1.1.1/…" in caddie.ok("team", "list").stdout
    assert "inside the deployment" in caddie.fails("team", "webhook", "golfers", "http://127.0.0.1:8000/x")
    assert caddie.fails("team", "webhook", "golfers") == "give a URL, or --remove"
    assert "golfers: no webhook" in caddie.ok("team", "webhook", "golfers", "--remove").stdout
    assert [t["webhook"] for t in api_get(caddie, "/api/v1/teams").json()] == [None]
