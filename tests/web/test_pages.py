"""The web pages through the real app (TestClient) on both backends: sign-in and its
cookie, CSRF on every state change, what other teams see (404), the new-run form's
errors next to their fields, publishing from the leaderboard, tokens."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.models import Metric, Run, RunEvent, utcnow
from service.core.settings import Settings
from service.http import session as web_session
from service.teams import accounts
from tests.web.conftest import Browser, finish
from tests.world import World

PAGES = ["/runs", "/runs/new", "/compare", "/groups", "/leaderboard", "/usage", "/tokens"]


def submit(b: Browser, world: World, who: str, **spec: object) -> list[int]:
    body = {"name": "baseline", "track": "10min_16mb", "hardware": "H100:8", "config": {}, "seeds": [1], **spec}
    body["config"] = {"STACK": "2026-03-23", **body["config"]}  # the stack these tests' configs are written for (9 layers, ...)
    r = b.c.post("/api/v1/runs", json=body, headers=world.h(who))
    assert r.status_code == 201, r.text
    return [run["id"] for run in r.json()["runs"]]


# --- sign-in ---------------------------------------------------------------------------------------
def test_pages_send_a_stranger_to_sign_in_and_back(client: TestClient, world: World) -> None:
    for page in PAGES:
        r = client.get(page, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), page
    r = client.post("/signin", data={"token": world.tokens["alice"], "next": "/leaderboard"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/leaderboard"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert world.tokens["alice"] not in cookie  # the cookie carries a signed hash, never the token
    for page in PAGES:
        assert client.get(page).status_code == 200, page


def test_sign_in_refuses_bad_and_revoked_tokens_and_foreign_redirects(client: TestClient, world: World) -> None:
    for token in ("cad_nonsense", world.tokens["carol"], ""):
        r = client.post("/signin", data={"token": token})
        assert r.status_code == 401 and "That token does not work" in r.text and "set-cookie" not in r.headers
    r = client.post("/signin", data={"token": world.tokens["alice"], "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/runs"
    # A sign-in form posted from another site is refused (login CSRF); this site's own is fine.
    for origin in ("https://evil.example", "null"):
        r = client.post("/signin", data={"token": world.tokens["alice"]}, headers={"Origin": origin}, follow_redirects=False)
        assert r.status_code == 403 and "set-cookie" not in r.headers
    r = client.post("/signin", data={"token": world.tokens["alice"]}, headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303


def test_free_text_is_escaped(world: World, browser_for, session: Session) -> None:
    b = browser_for(world.tokens["alice"])
    [run_id] = submit(b, world, "alice", name="<script>alert(1)</script>", notes="</script><b>x</b>")
    session.add(Metric(run_id=run_id, kind="train", step=1, train_loss=3.0, elapsed_ms=1.0))  # its name goes into chart JSON
    session.commit()
    for page in ("/runs", f"/runs/{run_id}", f"/compare?runs={run_id}", "/groups"):
        text = b.c.get(page).text
        assert "<script>alert(1)" not in text and "<b>x</b>" not in text, page
        # escaped for HTML, for JSON, or (in chart JSON) for plotly's pseudo-HTML
        assert any(shown in text for shown in ("&lt;script&gt;alert(1)", "\\u003cscript\\u003ealert(1)", "\\u0026lt;script\\u0026gt;alert(1)")), page


def test_the_cookie_is_secure_over_https(settings: Settings, world: World) -> None:
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        r = c.post("/signin", data={"token": world.tokens["alice"]}, follow_redirects=False)
    assert "Secure" in r.headers["set-cookie"]


def test_a_forged_expired_or_revoked_session_is_no_session(client: TestClient, world: World, settings: Settings, browser_for) -> None:
    key = web_session.secret_key(settings)
    b = browser_for(world.tokens["alice"])
    value = b.c.cookies[web_session.COOKIE_NAME]
    token_hash, issued, mac = value.split(".")
    assert web_session.token_hash_of(key, value) == token_hash
    assert web_session.token_hash_of(key, f"{token_hash}.{int(issued) + 1}.{mac}") is None  # tampered
    assert web_session.token_hash_of(b"another key", value) is None
    assert web_session.token_hash_of(key, value, now=int(issued) + web_session.MAX_AGE_S + 1) is None  # expired
    client.cookies.set(web_session.COOKIE_NAME, f"{token_hash}.{issued}.{mac[:-2]}xx")
    assert client.get("/runs", follow_redirects=False).status_code == 303
    # Revoking the token from the tokens page ends the session made from it.
    page = b.c.get("/tokens").text
    token_id = re.search(r'action="/tokens/(\d+)/revoke"', page)[1]
    assert b.post(f"/tokens/{token_id}/revoke", csrf_from="/tokens").status_code == 303
    assert b.c.get("/runs", follow_redirects=False).status_code == 303


def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    assert b.c.post("/signout", data={}, follow_redirects=False).status_code == 403
    r = b.post("/signout")
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert web_session.COOKIE_NAME not in b.c.cookies
    assert b.c.get("/runs", follow_redirects=False).status_code == 303


def test_a_cookie_kept_from_before_sign_out_no_longer_works(client: TestClient, world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    kept = b.c.cookies[web_session.COOKIE_NAME]
    other = browser_for(world.tokens["alice"])  # another browser of the same user stays signed in
    assert b.post("/signout").status_code == 303
    client.cookies.set(web_session.COOKIE_NAME, kept)
    assert client.get("/runs", follow_redirects=False).status_code == 303
    assert client.get("/api/v1/runs").status_code == 401
    assert other.c.get("/runs", follow_redirects=False).status_code == 200
    # The API token signed in with still works.
    assert client.get("/api/v1/runs", headers=world.h("alice")).status_code == 200


# --- CSRF and the API's cookie ------------------------------------------------------------------------
def test_every_state_change_refuses_a_missing_or_wrong_csrf_token(world: World, browser_for, session: Session) -> None:
    b = browser_for(world.tokens["alice"])
    [run_id] = submit(b, world, "alice")
    [done] = submit(b, world, "alice", name="done", config={"NUM_LAYERS": 9})
    finish(session, done, val_bpb=1.2, val_loss=2.0)
    group = b.c.get(f"/api/v1/runs/{done}", headers=world.h("alice")).json()["group_key"]
    forms = [f"/runs/{run_id}/cancel", "/runs/new", f"/groups/{group}/publish", "/tokens", "/tokens/1/revoke", "/signout"]
    for path in forms:
        for data in ({}, {"csrf_token": "forged"}):
            r = b.c.post(path, data={"name": "x", **data}, follow_redirects=False)
            assert r.status_code == 403, (path, r.status_code)
            assert "CSRF" in r.text
    # Another user's token does not pass for this session either.
    other = browser_for(world.tokens["aaron"])
    r = b.c.post(f"/runs/{run_id}/cancel", data={"csrf_token": other.csrf()}, follow_redirects=False)
    assert r.status_code == 403
    assert b.c.get(f"/api/v1/runs/{run_id}").json()["status"] == "QUEUED"
    assert b.post(f"/runs/{run_id}/cancel").status_code == 303
    assert b.c.get(f"/api/v1/runs/{run_id}").json()["status"] == "CANCELLED"


def test_the_api_takes_the_session_cookie_for_reads_only(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    [run_id] = submit(b, world, "alice")
    assert b.c.get(f"/api/v1/runs/{run_id}").status_code == 200
    assert b.c.get(f"/api/v1/runs/{run_id}/logs").status_code == 200
    assert b.c.post(f"/api/v1/runs/{run_id}/cancel").status_code == 401
    assert b.c.post("/api/v1/tokens", json={"name": "x"}).status_code == 401
    assert b.c.get(f"/api/v1/runs/{run_id}").json()["status"] == "QUEUED"


# --- what other teams see ---------------------------------------------------------------------------------
def test_another_teams_run_is_a_404_page(world: World, browser_for) -> None:
    alice, bob = browser_for(world.tokens["alice"]), browser_for(world.tokens["bob"])
    [run_id] = submit(alice, world, "alice", name="secret-sauce")
    for path in (f"/runs/{run_id}", f"/compare?runs={run_id}"):
        r = bob.c.get(path)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"], path
        assert "secret-sauce" not in r.text and "<nav>" in r.text
    assert bob.c.get(f"/web/runs/{run_id}/charts").status_code == 404
    assert bob.c.get(f"/api/v1/runs/{run_id}").status_code == 404
    assert "secret-sauce" not in bob.c.get("/runs").text
    assert bob.post(f"/runs/{run_id}/cancel").status_code == 404
    assert alice.c.get(f"/runs/{run_id}").status_code == 200


# --- pages ------------------------------------------------------------------------------------------------
def test_run_page_shows_spec_events_checks_and_downsampled_curves(world: World, browser_for, session: Session) -> None:
    b = browser_for(world.tokens["alice"])
    [run_id] = submit(b, world, "alice", name="curvy", config={"NUM_LAYERS": 9})
    session.add_all(Metric(run_id=run_id, kind="train", step=s, train_loss=5 - s / 5000, elapsed_ms=s * 10.0) for s in range(1, 12_001))
    session.add_all(Metric(run_id=run_id, kind="val", step=s, val_loss=3.0, val_bpb=1.5 - s / 100_000, elapsed_ms=s * 10.0) for s in range(1000, 12_001, 1000))
    session.commit()
    finish(session, run_id, val_bpb=1.38, val_loss=2.33)
    page = b.c.get(f"/runs/{run_id}").text
    for text in ("curvy", "NUM_LAYERS=9", "QUEUED", "SUCCEEDED", "artifact_bytes", "12000 points, drawn as at most 1000", "/static/plotly.min.js"):
        assert text in page, text
    figures = b.c.get(f"/web/runs/{run_id}/charts").json()
    loss = figures["loss"]["data"][0]
    assert figures["loss"]["points"] == 12_000 and len(loss["x"]) <= 1000 and loss["x"][0] == 1 and loss["x"][-1] == 12_000
    assert len(figures["bpb"]["data"][0]["y"]) == 12
    labels = [[b_["label"] for b_ in menu["buttons"]] for menu in figures["loss"]["layout"]["updatemenus"]]
    assert labels == [["step", "wallclock"], ["linear", "log"]]


def test_a_requeued_runs_curve_is_its_latest_attempt(world: World, browser_for, session: Session) -> None:
    b = browser_for(world.tokens["alice"])
    [run_id] = submit(b, world, "alice", name="requeued")
    # Attempt 1 got to step 30 before its node was preempted; attempt 2 started again from step 1.
    session.add_all(Metric(run_id=run_id, attempt=1, kind="train", step=s, train_loss=9.0, elapsed_ms=s * 10.0) for s in range(1, 31))
    session.add_all(Metric(run_id=run_id, attempt=2, kind="train", step=s, train_loss=5.0, elapsed_ms=s * 10.0) for s in range(1, 21))
    session.commit()
    loss = b.c.get(f"/web/runs/{run_id}/charts").json()["loss"]["data"][0]
    assert loss["x"] == list(range(1, 21)) and set(loss["y"]) == {5.0}
    # The API keeps every attempt's points.
    assert len(b.c.get(f"/api/v1/runs/{run_id}/metrics", headers=world.h("alice")).json()) == 50


def test_new_run_form_shows_the_servers_messages_next_to_their_fields(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    form = b.c.get("/runs/new").text
    # Limits from the trainer's schema are in the inputs, so the browser enforces them too.
    assert re.search(r'name="config.NUM_LAYERS" type="number" step="1"\s+min="1" max="64" value="11"', form)
    assert '<option selected>leaky_relu2</option>' in form or "leaky_relu2" in form
    r = b.post("/runs/new", {"name": "bad", "track": "unlimited", "hardware": "cpu", "seeds": "1, 1", "config.NUM_HEADS": "7", "config.NUM_KV_HEADS": "7"}, csrf_from="/runs/new")
    assert r.status_code == 422
    errors = dict(re.findall(r'<span class="field-error" data-field="([^"]+)">([^<]+)</span>', r.text))
    api = b.c.post("/api/v1/runs", headers=world.h("alice"),
                   json={"name": "bad", "track": "unlimited", "hardware": "cpu", "seeds": [1, 1], "config": {"NUM_HEADS": 7, "NUM_KV_HEADS": 7}}).json()
    assert errors == {"config.NUM_HEADS": "must divide MODEL_DIM=512", "seeds": "seeds must be unique; repeated: 1"}
    assert sorted(errors.values()) == sorted(d["msg"] for d in api["detail"])
    assert 'value="bad"' in r.text  # what was typed stays
    r = b.post("/runs/new", {"name": "", "track": "nope", "hardware": "cpu"}, csrf_from="/runs/new")
    errors = dict(re.findall(r'<span class="field-error" data-field="([^"]+)">([^<]+)</span>', r.text))
    assert set(errors) == {"name"}  # pydantic first; the domain's checks run once the body is well-formed
    # The STACK select starts at the default stack; 4 layers need the seed stack (2026-04-27's XSA_LAST_N is 11).
    assert re.search(r'<select id="k-STACK" name="config.STACK">[^/]*>2026-03-23</option><option selected>2026-04-27</option></select>', form)
    r = b.post("/runs/new", {"name": "ok", "track": "unlimited", "hardware": "cpu", "seeds": "5", "config.STACK": "2026-03-23",
                             "config.NUM_LAYERS": "4", "config.MODEL_DIM": "512"}, csrf_from="/runs/new")  # fmt: skip
    assert r.status_code == 303
    run = b.c.get("/api/v1" + r.headers["location"]).json()
    assert run["spec"] == {"NUM_LAYERS": 4, "STACK": "2026-03-23"} and run["seed"] == 5 and run["status"] == "QUEUED"
    # A form showing the 2026-03-23 stack's defaults (?stack=, or caddie.js after the STACK select moved):
    # a knob at what it showed is left to the preset, a knob typed at the other stack's default is kept.
    seed_form = b.c.get("/runs/new?stack=2026-03-23").text
    assert 'name="shown_stack" id="shown-stack" value="2026-03-23"' in seed_form and "<option selected>2026-03-23</option>" in seed_form
    assert re.search(r'name="config.VOCAB_SIZE" data-stack-defaults="[^"]*" type="number" step="1"\s+min="16" max="65536" value="1024"', seed_form)
    r = b.post("/runs/new", {"name": "seed", "track": "unlimited", "hardware": "cpu", "seeds": "6", "shown_stack": "2026-03-23",
                             "config.STACK": "2026-03-23", "config.VOCAB_SIZE": "1024", "config.TTT_EPOCHS": "1"}, csrf_from="/runs/new")  # fmt: skip
    assert r.status_code == 303, r.text
    assert b.c.get("/api/v1" + r.headers["location"]).json()["spec"] == {"STACK": "2026-03-23", "TTT_EPOCHS": 1}


def test_leaderboard_publish_and_unpublish(world: World, browser_for, session: Session) -> None:
    alice, bob = browser_for(world.tokens["alice"]), browser_for(world.tokens["bob"])
    ids = submit(alice, world, "alice", name="xsa", config={"XSA_LAST_N": 6}, seeds=[1, 2])
    for i, run_id in enumerate(ids):
        finish(session, run_id, val_bpb=1.10 + i / 1000, val_loss=1.9 + i / 1000)
    key = alice.c.get(f"/api/v1/runs/{ids[0]}").json()["group_key"]
    board = alice.c.get("/leaderboard").text
    assert f'data-group="{key}"' in board and ">Publish<" in board
    assert f'data-group="{key}"' not in bob.c.get("/leaderboard").text
    assert bob.c.get(f"/groups/{key}").status_code == 404
    r = alice.post(f"/groups/{key}/publish", {"next": "/leaderboard"}, csrf_from="/leaderboard")
    assert r.status_code == 303 and r.headers["location"] == "/leaderboard"
    assert ">Unpublish<" in alice.c.get("/leaderboard").text
    seen = bob.c.get("/leaderboard").text
    assert f'data-group="{key}"' in seen and ">Publish<" not in seen  # visible, but not bob's to unpublish
    assert bob.post(f"/groups/{key}/unpublish", csrf_from="/leaderboard").status_code == 403
    assert alice.post(f"/groups/{key}/unpublish", csrf_from="/leaderboard").status_code == 303
    assert f'data-group="{key}"' not in bob.c.get("/leaderboard").text


def test_compare_shows_config_differences_and_significance(world: World, browser_for, session: Session) -> None:
    b = browser_for(world.tokens["alice"])
    base = submit(b, world, "alice", name="base", config={"NUM_LAYERS": 9}, seeds=[1, 2, 3])
    cand = submit(b, world, "alice", name="cand", config={"NUM_LAYERS": 10}, seeds=[1, 2, 3])
    for i, run_id in enumerate(base):
        finish(session, run_id, val_bpb=1.2 + i / 1000, val_loss=2.0 + i / 1000)
    for i, run_id in enumerate(cand):
        finish(session, run_id, val_bpb=1.1 + i / 1000, val_loss=1.9 + i / 1000)
    page = b.c.get(f"/compare?runs={base[0]}&pick={cand[0]}").text
    assert re.search(r"<th>NUM_LAYERS</th><td class=\"muted\">11</td><td><b>9</b></td><td><b>10</b></td>", page)
    assert 'id="significance"' in page and "cand" in page
    groups = b.c.get("/groups").text
    assert "NUM_LAYERS=10" in groups


def test_usage_page_counts_gpu_hours_and_shows_the_queue_in_order(world: World, browser_for, session: Session) -> None:
    b = browser_for(world.tokens["alice"])
    low = submit(b, world, "alice", name="low", priority=0)
    high = submit(b, world, "alice", name="high", priority=5)
    [done] = submit(b, world, "alice", name="done", config={"NUM_LAYERS": 9})
    finish(session, done, val_bpb=1.2, val_loss=2.0)
    now = utcnow()  # billed from provisioning to release: 20 minutes on H100:8 = 2.67 GPU-hours
    session.add_all([RunEvent(run_id=done, at=now - timedelta(minutes=20), from_status="QUEUED", to_status="PROVISIONING", actor="scheduler"),
                     RunEvent(run_id=done, at=now - timedelta(minutes=15), from_status="PROVISIONING", to_status="RUNNING", actor="worker"),
                     RunEvent(run_id=done, at=now, from_status="RUNNING", to_status="SUCCEEDED", actor="worker")])
    session.get(Run, done).warm_start = True
    session.commit()
    page = b.c.get("/usage").text
    assert "2.67 GPU-hours in 30 days" in page and "cost $7.97" in page  # 2.67 h at $2.99
    # A warm start with no cold one to compare: CADDIE_COLD_PROVISION_S (360 s) - its own 300 s, x 8 GPUs = 480 GPU-s.
    assert re.search(r"1 run started on a reused warm cluster, saving about\s+0.13 GPU-hours \(\$0.40\)", page)
    queue = re.findall(r"<tr><td>(\d+|—)</td><td><a href=\"/runs/(\d+)\"", page)
    assert queue == [("1", str(high[0])), ("2", str(low[0]))]
    assert "starting now" in page and "waiting for a H100:8 slot" in page  # the forecast's reasons


def test_usage_page_shows_a_long_queues_next_runs_and_how_many_wait(world: World, browser_for) -> None:
    """A team with more queued than the page shows: its next USAGE_QUEUE_SHOWN in the forecast's order (GET /queue's
    first page, read from the stored forecast's index) and the count, not every row."""
    from service.web.routes import USAGE_QUEUE_SHOWN

    b = browser_for(world.tokens["alice"])
    ids = [i for n in range(4) for i in submit(b, world, "alice", name=f"many{n}", config={"NUM_LAYERS": 5 + n}, seeds=list(range(1, 16)))]
    assert len(ids) > USAGE_QUEUE_SHOWN
    page = b.c.get("/usage").text
    api = [r["id"] for r in b.c.get("/api/v1/queue", params={"team": "team-a", "limit": USAGE_QUEUE_SHOWN}, headers=world.h("alice")).json()]
    shown = [int(i) for i in re.findall(r"<tr><td>(?:\d+|—)</td><td><a href=\"/runs/(\d+)\"", page)]
    assert shown == api and len(shown) == USAGE_QUEUE_SHOWN and set(shown) <= set(ids)
    assert f"The next {USAGE_QUEUE_SHOWN} of {len(ids)} queued runs" in page


def test_runs_page_filters_and_pages_like_the_api(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    for i in range(4):
        submit(b, world, "alice", name=f"batch{i}", config={"NUM_LAYERS": 5 + i}, seeds=list(range(14)))
    submit(b, world, "aaron", name="needle", notes="find me")
    first = b.c.get("/runs").text
    ids = [int(x) for x in re.findall(r'<tr data-run-id="(\d+)">', first)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True)
    next_url = re.search(r'href="([^"]+)" id="next-page"', first)[1].replace("&amp;", "&")
    rest = [int(x) for x in re.findall(r'<tr data-run-id="(\d+)">', b.c.get(next_url).text)]
    assert len(rest) == 7 and max(rest) < min(ids)
    # The live poll asks the API for the same rows.
    poll = re.search(r'data-poll="([^"]+)"', first)[1].replace("&amp;", "&")
    assert [r["id"] for r in b.c.get(poll).json()["items"]] == ids
    assert re.findall(r'<tr data-run-id="(\d+)">', b.c.get("/runs?q=find&user=aaron").text) == [str(ids[0])]
    assert 'data-run-id' not in b.c.get("/runs?status=RUNNING").text


def test_tokens_page_shows_a_new_token_once_and_it_works(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    page = b.post("/tokens", {"name": "laptop"}, csrf_from="/tokens")
    assert page.status_code == 200
    secret = re.search(r"<code>(cad_[^<]+)</code>", page.text)[1]
    assert b.c.get("/api/v1/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listing = b.c.get("/tokens").text
    assert "laptop" in listing and secret not in listing and "(this browser)" in listing
    assert b.post("/tokens", {"name": ""}, csrf_from="/tokens").status_code == 422


def test_ids_out_of_range_are_refused_not_looked_up(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    for path in (f"/runs/{2**31}", "/runs/0", f"/web/runs/{2**40}/charts"):
        assert b.c.get(path).status_code == 422, path


def test_a_queued_runs_page_says_where_it_stands(world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    first, second = submit(b, world, "alice", name="queued"), submit(b, world, "alice", name="queued-too")
    page = b.c.get(f"/runs/{second[0]}").text
    assert 'id="queue-estimate"' in page and "#2 on" in page and "waiting for a" in page
    b.post(f"/runs/{first[0]}/cancel")
    assert "#1 on" in b.c.get(f"/runs/{second[0]}").text


def test_cursors_and_compared_ids_out_of_range_are_a_422(world: World, browser_for) -> None:
    import base64

    b = browser_for(world.tokens["alice"])
    cursor = base64.urlsafe_b64encode(f"r{2**31 + 5}".encode()).decode().rstrip("=")
    assert b.c.get(f"/runs?cursor={cursor}").status_code in (400, 422)
    assert b.c.get("/compare?runs=99999999999").status_code in (400, 422)
    assert b.c.get(f"/compare?pick={2**40}").status_code in (400, 422)
    assert b.c.get("/compare?runs=0").status_code in (400, 422)


def test_compare_page_takes_a_public_record_as_baseline(world: World, browser_for, session: Session) -> None:
    """/compare?groups=record:<folder>,<group>: the record is the baseline, tested in nats per byte."""
    from pathlib import Path

    from service.results.public_records import read_record, record_folders
    from service.results.records_store import import_records

    challenge = Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge"
    import_records(session, [read_record(f) for f in record_folders(challenge) if f.name.startswith("2026-03-17_NaiveBaseline")])
    session.commit()
    b = browser_for(world.tokens["alice"])
    cand = submit(b, world, "alice", name="cand", config={"NUM_LAYERS": 10}, seeds=[1, 2, 3])
    for i, run_id in enumerate(cand):
        finish(session, run_id, val_bpb=1.1 + i / 1000, val_loss=1.9 + i / 1000)
    key = session.get(Run, cand[0]).group_key
    page = b.c.get(f"/compare?groups=record:2026-03-17_NaiveBaseline,{key}").text
    assert 'id="significance"' in page and "Naive Baseline (public record, 2026-03-18)" in page and "nats per byte" in page
    board = b.c.get("/leaderboard?track=10min_16mb").text
    assert "Naive Baseline (public record, 2026-03-18)" in board and "public record" in board
    r = b.c.get("/groups/record:2026-03-17_NaiveBaseline")
    assert r.status_code == 200 and "1.2244" in r.text  # the record's own page: its seed's figures


def test_every_answer_carries_the_security_headers(client: TestClient, world: World, browser_for) -> None:
    b = browser_for(world.tokens["alice"])
    answers = [b.c.get("/runs"), b.c.get("/runs/999"), b.c.get("/static/caddie.js"), client.get("/signin"),
               client.get("/api/v1/runs", headers=world.h("alice")), client.get("/api/v1/runs"), client.get("/docs")]
    for r in answers:
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, r.url
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin", r.url
    assert "script-src 'self';" in answers[0].headers["content-security-policy"]  # pages: no inline scripts


def test_a_run_name_is_plain_text_in_a_chart() -> None:
    from service.web.charts import Series, figure, plain_label

    assert plain_label('<a href="x">n</a> %{y}') == '&lt;a href="x"&gt;n&lt;/a&gt; %\u200b{y}'
    trace = figure("t", "y", [Series('<a href="https://evil.example">x</a>', [1], [1.0], [2.0])])["data"][0]
    assert "<a" not in trace["name"] and "<a" not in trace["hovertemplate"].replace("<extra>", "")


def test_the_teams_page_invites_and_accepts(world: World, browser_for, session: Session) -> None:
    from service.teams import accounts

    accounts.create_user(session, "dora")
    _, dora_token = accounts.create_token(session, "dora", "t")
    session.commit()
    aaron = browser_for(world.tokens["aaron"])
    assert aaron.post("/teams/team-a/invite", {"user": "dora"}, csrf_from="/teams").status_code == 303
    assert aaron.post("/teams/team-a/invite", {"user": "no-one"}, csrf_from="/teams").status_code == 303  # same answer
    assert "dora" not in aaron.c.get("/teams").text
    assert aaron.c.post("/teams/team-a/invite", data={"user": "dora"}, follow_redirects=False).status_code == 403  # no CSRF token
    alice = browser_for(world.tokens["alice"])  # a plain member cannot invite
    assert alice.post("/teams/team-a/invite", {"user": "dora"}, csrf_from="/teams").status_code == 404
    dora = browser_for(dora_token)
    page = dora.c.get("/teams").text
    assert "Team <strong>team-a</strong> invited you as member" in page
    assert dora.post("/teams/team-a/accept", csrf_from="/teams").status_code == 303
    assert "dora" in aaron.c.get("/teams").text and "invited you" not in dora.c.get("/teams").text


def test_the_cancel_button_shows_only_to_who_may_cancel(world: World, browser_for) -> None:
    aaron = browser_for(world.tokens["aaron"])
    [run_id] = submit(aaron, world, "aaron", name="aaron's")
    assert 'id="cancel-button"' in aaron.c.get(f"/runs/{run_id}").text
    alice = browser_for(world.tokens["alice"])
    assert 'id="cancel-button"' not in alice.c.get(f"/runs/{run_id}").text
    assert alice.post(f"/runs/{run_id}/cancel").status_code == 403


def test_a_global_admins_usage_page_of_many_teams_is_one_line_a_team_each_a_link_to_its_own(world: World, browser_for, session: Session) -> None:
    """Past USAGE_DETAIL_MAX teams the page is an overview (a stacked chart and one row a team: GPU-hours, budget,
    cost, running, queued); ?team= opens one team's chart and queue; a team the caller cannot see is a 404."""
    from service.web.routes import USAGE_DETAIL_MAX

    for i in range(USAGE_DETAIL_MAX):
        accounts.create_team(session, f"crowd-{i}")
    session.commit()
    alice = browser_for(world.tokens["alice"])
    submit(alice, world, "alice", name="waits", seeds=[1, 2])
    root = browser_for(world.tokens["root"])
    page = root.c.get("/usage").text
    rows = re.findall(r'<tr data-team="([^"]+)"><td><a href="/usage\?team=([^"]+)">', page)
    assert [r[0] for r in rows] == sorted(["team-a", "team-b", *(f"crowd-{i}" for i in range(USAGE_DETAIL_MAX))])
    assert all(team == link for team, link in rows)
    assert re.search(r'<tr data-team="team-a">.*?<td>0</td><td>2</td></tr>', page, re.S)  # nothing running, two queued
    assert 'class="grid queue"' not in page  # no team's queue table here
    assert 'id="usage-overview-empty"' in page and 'id="figure-usage-overview"' not in page  # nothing billed yet: no empty chart
    [done] = submit(alice, world, "alice", name="done")
    now = utcnow()  # 30 minutes on H100:8: the stacked chart has team-a's bar
    session.add_all([RunEvent(run_id=done, at=now - timedelta(minutes=30), from_status="QUEUED", to_status="PROVISIONING", actor="scheduler"),
                     RunEvent(run_id=done, at=now, from_status="PROVISIONING", to_status="CANCELLED", actor="worker")])
    session.get(Run, done).status = "CANCELLED"
    session.commit()
    page = root.c.get("/usage").text
    assert 'id="figure-usage-overview"' in page and '"name":"team-a"' in page and '"name":"team-b"' not in page
    assert re.search(r'<tr data-team="team-a">.*?<td>4.00</td>', page, re.S)
    one = root.c.get("/usage", params={"team": "team-a"}).text
    assert 'data-team="team-a"' in one and 'data-team="team-b"' not in one and 'class="grid queue"' in one
    assert len(re.findall(r"<tr><td>(?:\d+|—)</td><td><a href=\"/runs/", one)) == 2
    assert root.c.get("/usage", params={"team": "nope"}).status_code == 404
    assert alice.c.get("/usage", params={"team": "team-b"}).status_code == 404  # not hers: as if it did not exist
    mine = alice.c.get("/usage").text  # a member's page stays the detailed one
    assert 'class="team-usage" data-team="team-a"' in mine and "usage-overview" not in mine
