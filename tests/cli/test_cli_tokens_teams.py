"""Tokens and memberships from the CLI as from the web: create, list, revoke, invite,
accept; and the hint `caddie up` prints names commands that exist."""

from __future__ import annotations

import re

import httpx

from cli.main import app as cli_app
from tests.cli.conftest import Caddie, api_get
from worker.embedded import TOKEN_HINT


def test_tokens_are_made_listed_and_revoked(caddie: Caddie) -> None:
    made = caddie.ok("token", "create", "laptop")
    secret = made.stdout.strip()
    token_id = re.search(r"token #(\d+)", made.stderr)[1]
    assert secret.startswith("cad_") and httpx.get(caddie.url + "/api/v1/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listing = caddie.ok("token", "list").stdout
    assert f"#{token_id}  laptop  {secret[:12]}" in listing and secret not in listing
    assert f"token #{token_id} revoked" in caddie.ok("token", "revoke", token_id).stdout
    assert httpx.get(caddie.url + "/api/v1/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert "revoked" in caddie.ok("token", "list").stdout
    assert caddie.fails("token", "revoke", "999999") == "token 999999 not found"


def test_a_team_admin_invites_and_the_user_accepts(caddie: Caddie) -> None:
    caddie.ok("admin", "create-team", "other")
    caddie.ok("admin", "create-user", "zed", "--team", "other")
    zed = caddie.ok("admin", "create-token", "zed").stdout.strip()
    caddie.ok("team", "invite", "golfers", "zed")
    caddie.ok("team", "invite", "golfers", "no-such-user")  # the same answer: names are not listed
    assert "zed" not in caddie.ok("team", "list").stdout
    assert "invited to golfers as member: caddie team accept golfers" in caddie.ok("team", "list", CADDIE_TOKEN=zed).stdout
    assert caddie.fails("team", "accept", "nowhere", CADDIE_TOKEN=zed) == "no invitation to team nowhere"
    assert "member of golfers" in caddie.ok("team", "accept", "golfers", CADDIE_TOKEN=zed).stdout
    assert "zed (member)" in caddie.ok("team", "list").stdout
    assert [t["name"] for t in api_get(caddie, "/api/v1/teams").json()] == ["golfers"]


def test_the_hint_caddie_up_prints_names_commands_that_exist(caddie: Caddie) -> None:
    commands = re.findall(r"caddie ([a-z-]+(?: [a-z-]+)?)", TOKEN_HINT)
    assert commands == ["token create", "admin create-token"]
    for command in commands:
        result = caddie.runner.invoke(cli_app, [*command.split(), "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command
