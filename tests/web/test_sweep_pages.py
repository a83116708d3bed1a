"""The sweep pages: the list, a sweep's figures and trials, stop/resume by form (CSRF), other teams' 404."""

from __future__ import annotations

import html
import json
import re

from sqlalchemy.orm import Session

from service.core.models import Metric
from service.core.settings import Settings
from tests.sweeps.test_sweeps_api import _end, _tick, sweep_body
from tests.world import World


def test_sweep_pages(world: World, browser_for, session: Session, settings: Settings) -> None:
    b = browser_for(world.tokens["alice"])
    sid = b.c.post("/api/v1/sweeps", json=sweep_body(name="<b>depth</b>"), headers=world.h("alice")).json()["id"]
    _tick(session, settings)
    trials = b.c.get(f"/api/v1/sweeps/{sid}", headers=world.h("alice")).json()["trials"]
    session.add_all([Metric(run_id=trials[0]["run_ids"][0], kind="train", step=s, train_loss=3.0 - s / 1000, attempt=1) for s in (100, 200)])
    session.commit()
    _end(session, trials[0]["run_ids"], 1.21)
    _end(session, trials[1]["run_ids"], 1.19)
    _tick(session, settings)

    listed = b.c.get("/sweeps").text
    assert f'href="/sweeps/{sid}"' in listed and "&lt;b&gt;depth&lt;/b&gt;" in listed and "<b>depth" not in listed
    page = b.c.get(f"/sweeps/{sid}")
    assert page.status_code == 200
    figures = {m[1]: json.loads(m[2]) for m in re.finditer(r'<script type="application/json" id="figure-(\w+)">(.*?)</script>', page.text)}
    assert set(figures) == {"best", "parallel", "curves"}  # importance from 3 valued trials on
    best = figures["best"]["data"][0]
    assert best["y"] == [1.21, 1.19] and best["x"][1] > best["x"][0] > 0
    assert [d["label"] for d in figures["parallel"]["data"][0]["dimensions"]] == ["NUM_LAYERS", "val_bpb"]
    assert figures["curves"]["data"][0]["x"] == [100, 200]
    assert "best</strong>" in page.text and "Stop</button>" in page.text

    assert b.c.post(f"/sweeps/{sid}/stop", data={"csrf_token": "forged"}, follow_redirects=False).status_code == 403
    assert b.post(f"/sweeps/{sid}/stop", csrf_from=f"/sweeps/{sid}").status_code == 303
    assert b.c.get(f"/api/v1/sweeps/{sid}").json()["status"] == "stopped"
    assert "Resume</button>" in b.c.get(f"/sweeps/{sid}").text

    other = browser_for(world.tokens["bob"])
    r = other.c.get(f"/sweeps/{sid}")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert f"/sweeps/{sid}" not in other.c.get("/sweeps").text


def test_a_sweep_with_the_median_pruner_shows_it_and_its_pruned_trial(world: World, browser_for, session: Session, settings: Settings) -> None:
    from tests.sweeps.test_sweeps_api import test_the_median_pruner_stops_a_trial_behind_the_median as median_scenario

    b = browser_for(world.tokens["alice"])
    median_scenario(b.c, world, session, settings)  # a median-pruned trial has no value (no predicted final)
    sid = b.c.get("/api/v1/sweeps", headers=world.h("alice")).json()["items"][0]["id"]
    page = b.c.get(f"/sweeps/{sid}")
    assert page.status_code == 200 and "Optuna's median pruner on the train loss, from step 500, after 2 complete trials" in page.text
    assert "MedianPruner at step 700" in page.text and "predicted</span>" not in page.text


def test_the_sweep_page_says_where_promotion_stands(world: World, browser_for, session: Session, settings: Settings, spec) -> None:  # noqa: ANN001
    from tests.sweeps.test_sweeps_api import test_a_clearly_better_trial_is_promoted_until_better_and_record_eligible as eligible_scenario

    b = browser_for(world.tokens["alice"])
    eligible_scenario(b.c, world, session, settings, spec)
    shown = b.c.get("/api/v1/sweeps", headers=world.h("alice")).json()["items"][0]
    page = b.c.get(f"/sweeps/{shown['id']}").text
    table = page[page.index('id="promotion-table"') :]
    key = shown["result"]["group_key"]
    assert f'<a href="/groups/{key}">#2</a>' in table and "<strong>better at p = " in table and "<strong>eligible</strong>" in table and ">1, 2, 7<" in table
    p = shown["promotion"][0]
    assert f"{p['p_value']:.3g}" in table and "nats per byte" in table and ">base<" in table
    assert f"caddie export {key[:12]}" in page and "until the test" in page and "from 3 to at most 8 seeds" in page


def test_the_sweep_page_says_a_better_group_off_8x_h100_is_no_record(world: World, browser_for, session: Session, settings: Settings,
                                                                     spec) -> None:  # noqa: ANN001
    from tests.sweeps.test_sweeps_api import test_off_8x_h100_promotion_runs_to_the_tests_verdict_and_says_it_is_no_record as off_scenario

    b = browser_for(world.tokens["alice"])
    off_scenario(b.c, world, session, settings, spec)
    shown = b.c.get("/api/v1/sweeps", headers=world.h("alice")).json()["items"][0]
    page = b.c.get(f"/sweeps/{shown['id']}").text
    result = page[page.index('id="promotion-result"') : page.index('id="promotion-table"')]
    assert f"<strong>{html.escape(shown['result']['headline'])}</strong>" in result and "checks not comparable: train_time, eval_time" in result
    assert "caddie export" not in page
    table = page[page.index('id="promotion-table"') :]
    assert "<td class=\"small\">no <span class=\"muted\">checks not comparable: train_time, eval_time" in table


def test_a_script_sweeps_page_shows_its_script_not_knobs(world: World, browser_for, session: Session, settings: Settings) -> None:
    from service.runs.scripts.spec import sha256_hex
    from tests.sweeps.test_script_sweeps_api import SCRIPT, script_body

    b = browser_for(world.tokens["alice"])
    sid = b.c.post("/api/v1/sweeps", json=script_body(), headers=world.h("alice")).json()["id"]
    _tick(session, settings)
    page = b.c.get(f"/sweeps/{sid}").text
    base = html.unescape(re.search(r'<p id="sweep-base">(.*?)</p>', page, re.S).group(1))  # type: ignore[union-attr]
    assert f"script <code>train_gpt.py</code> <code title=\"sha256 {sha256_hex(SCRIPT)}\">{sha256_hex(SCRIPT)[:12]}</code>, data sp1024" in base
    assert "with helper.py" in base and "<code>MAX_WALLCLOCK_SECONDS=300</code>" in base and "sets the env variables LR, LAYERS" in base
    assert "shared trainer" not in base
    trainer = b.c.post("/api/v1/sweeps", json=sweep_body(), headers=world.h("alice")).json()["id"]
    assert "the shared trainer with <code>STACK=2026-03-23</code>" in re.search(r'<p id="sweep-base">(.*?)</p>', b.c.get(f"/sweeps/{trainer}").text, re.S).group(1)  # type: ignore[union-attr]
