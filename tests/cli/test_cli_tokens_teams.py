"""Tokens and memberships from the CLI as from the web: create, list, revoke, invite,
accept, decline, remove and leave; and the hint `caddie up` prints names commands that exist."""

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


def test_an_invited_user_declines_a_member_leaves_and_an_admin_removes_one_but_not_the_last_admin(caddie: Caddie) -> None:
    caddie.ok("admin", "create-team", "elsewhere")
    for name in ("yan", "yul"):
        caddie.ok("admin", "create-user", name, "--team", "elsewhere")
    yan, yul = (caddie.ok("admin", "create-token", n).stdout.strip() for n in ("yan", "yul"))
    caddie.ok("team", "invite", "golfers", "yan")
    assert "caddie team accept golfers (or decline)" in caddie.ok("team", "list", CADDIE_TOKEN=yan).stdout
    assert caddie.fails("team", "decline", "nowhere", CADDIE_TOKEN=yan) == "no invitation to team nowhere"
    assert "invitation to golfers declined" in caddie.ok("team", "decline", "golfers", CADDIE_TOKEN=yan).stdout
    assert "invited" not in caddie.ok("team", "list", CADDIE_TOKEN=yan).stdout
    assert caddie.fails("team", "accept", "golfers", CADDIE_TOKEN=yan) == "no invitation to team golfers"
    # Invited again, both join; a member may not remove another, but may leave.
    for name, token in (("yan", yan), ("yul", yul)):
        caddie.ok("team", "invite", "golfers", name)
        caddie.ok("team", "accept", "golfers", CADDIE_TOKEN=token)
    assert caddie.fails("team", "remove", "golfers", "yul", CADDIE_TOKEN=yan).startswith("not allowed: only admins of team 'golfers'")
    assert "yan is no longer a member of golfers" in caddie.ok("team", "remove", "golfers", "yan", CADDIE_TOKEN=yan).stdout
    assert "yul is no longer a member of golfers" in caddie.ok("team", "remove", "golfers", "yul").stdout
    listing = caddie.ok("team", "list").stdout
    assert "yan (" not in listing and "yul (" not in listing
    assert "member of team 'golfers'" in caddie.fails("team", "remove", "golfers", "yul")
    assert "last admin of team 'golfers'" in caddie.fails("team", "remove", "golfers", "ann")


def test_the_hint_caddie_up_prints_names_commands_that_exist(caddie: Caddie) -> None:
    commands = re.findall(r"caddie ([a-z-]+(?: [a-z-]+)?)", TOKEN_HINT)
    assert commands == ["token create", "admin create-token"]
    for command in commands:
        result = caddie.runner.invoke(cli_app, [*command.split(), "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_web_sign_ins_are_listed_apart_and_one_is_ended_from_the_cli(caddie: Caddie) -> None:
    browser = httpx.Client(base_url=caddie.url)
    assert browser.post("/signin", data={"token": caddie.token, "next": "/runs"}).status_code in (200, 303)
    assert browser.get("/runs", follow_redirects=False).status_code == 200
    assert "web session of" not in caddie.ok("token", "list").stdout
    listing = caddie.ok("token", "sessions").stdout
    [session_id] = re.findall(r"^#(\d+)  web session of #\d+  created .* expires ", listing, re.M)
    assert f"token #{session_id} revoked" in caddie.ok("token", "revoke", session_id).stdout
    assert browser.get("/runs", follow_redirects=False).status_code == 303  # that browser is signed out
    assert caddie.ok("token", "sessions").stdout.strip() == ""
