"""The web pages in a real browser: Playwright for Python driving Debian's chromium
(/usr/bin/chromium; Playwright's own browser download cannot work here) against a
real stack (API under uvicorn, a celery worker and beat, the local launcher, the
real trainer on the offline smoke corpus; tests/e2e's harness).

Each test saves a screenshot to test-artifacts/web/. With CADDIE_DOCS_SCREENSHOT=1
the run page's screenshot also goes to docs/run-detail.png (the README's picture).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from service.core.models import Metric
from service.teams import accounts
from tests.e2e.conftest import TINY, Stack, _stack
from tests.fresh_db import fresh_database

CHROMIUM = Path(os.environ.get("CADDIE_TEST_CHROMIUM", "/usr/bin/chromium"))
# As the machine notes say: without the background-networking flags chromium keeps
# trying to reach Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "run-detail.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does)"),
]

FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
STATE: dict[str, Any] = {}  # what one test leaves for a later one (the run the form made)


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory, smoke_corpus_dir: Path) -> Iterator[Stack]:
    # Its own broker (SQLite, under its home): the e2e stack lives for the whole session, and
    # its worker, on a shared Redis queue, would take this stack's dispatch messages.
    with fresh_database() as pg_url:
        yield from _stack(tmp_path_factory, pg_url, "", smoke_corpus_dir)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, web_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A signed-in page (a fresh browser context: its own cookies)."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, base_url=web_stack.url)
    pg = context.new_page()
    sign_in(pg, web_stack.token)
    yield pg
    context.close()


def sign_in(pg: Any, token: str) -> None:
    pg.goto("/signin")
    pg.fill("#token", token)
    pg.click("button[type=submit]")
    pg.wait_for_url("**/runs")


def shot(pg: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def wait_status(pg: Any, statuses: tuple[str, ...], timeout_s: float) -> str:
    """Wait for the run page (refreshing itself) to show one of ``statuses``."""
    selector = ", ".join(f"#run-status .status-{s.lower()}" for s in statuses)
    pg.wait_for_selector(selector, timeout=timeout_s * 1000)
    return pg.inner_text("#run-status").strip()


def fill_knob(pg: Any, knob: str, value: Any) -> None:
    selector = f"#k-{knob}"
    if pg.eval_on_selector(selector, "e => e.tagName") == "SELECT":
        booleans = {True: "true", False: "false"}  # 1 and 0 hash as True and False
        pg.select_option(selector, booleans.get(value, str(value)) if not isinstance(value, str) else value)
    else:
        pg.fill(selector, str(value))


def chart_points(pg: Any, chart_id: str) -> list[int]:
    """Points per trace that plotly holds for the chart (its div's .data)."""
    return pg.evaluate(f"() => (document.getElementById('{chart_id}').data || []).map(t => (t.x || []).length)")


# --- tests ------------------------------------------------------------------------------------------
def test_sign_in_with_a_token(browser: Any, web_stack: Stack) -> None:
    context = browser.new_context(base_url=web_stack.url)
    pg = context.new_page()
    pg.goto("/runs")
    pg.wait_for_url("**/signin?next=%2Fruns")
    pg.fill("#token", "cad_wrong")
    pg.click("button[type=submit]")
    assert "That token does not work" in pg.inner_text("#signin-error")
    shot(pg, "01-sign-in-refused")
    sign_in(pg, web_stack.token)
    assert pg.inner_text("h1") == "Runs" and "e2e-admin" in pg.inner_text("header")
    cookie = next(c for c in context.cookies() if c["name"] == "caddie_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert pg.evaluate("() => document.cookie") == ""  # page scripts cannot read it
    shot(pg, "02-signed-in")
    context.close()


def test_submit_from_the_form_watch_it_succeed_and_see_its_curves(page: Any, web_stack: Stack) -> None:
    page.goto("/runs/new")
    page.fill("#f-name", "browser-smoke")
    page.select_option("#f-track", "unlimited")
    page.select_option("#f-hardware", "cpu")
    page.fill("#f-seeds", "7")
    for knob, value in TINY.items():
        fill_knob(page, knob, value)
    page.click("#submit-run")
    page.wait_for_url("**/runs/*")
    run_id = int(page.url.rsplit("/", 1)[1])
    status = wait_status(page, FINISHED, 150)
    assert status == "SUCCEEDED", page.inner_text("#status-reason")
    page.wait_for_function("() => document.body.dataset.chartsDrawn === '2'", timeout=10_000)
    loss, bpb = chart_points(page, "chart-loss"), chart_points(page, "chart-bpb")
    assert loss and loss[0] >= 6 and bpb and bpb[0] >= 1, (loss, bpb)
    assert page.locator("#chart-loss .scatterlayer .trace path.js-line").count() >= 1  # a drawn line, not just data
    assert "pass" in page.inner_text("#checks") or "not comparable" in page.inner_text("#checks")
    assert page.locator("#artifacts a", has_text="model.int6.ptz").count() == 1
    assert "final_ttt" in page.inner_text("#log")
    # The artifact link downloads with the session cookie.
    with page.expect_download() as download:
        page.click("#artifacts a:has-text('result.json')")
    assert Path(download.value.path()).read_bytes().startswith(b"{")
    # Log scale and wallclock: the buttons plotly draws from the figure's updatemenus.
    page.click("#chart-loss .updatemenu-button:has-text('log')")
    assert page.evaluate("() => document.getElementById('chart-loss').layout.yaxis.type") == "log"
    page.click("#chart-loss .updatemenu-button:has-text('linear')")
    STATE["run_id"] = run_id
    path = shot(page, "03-run-detail")
    if os.environ.get("CADDIE_DOCS_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SHOT)
    page.goto("/runs")
    assert page.locator(f'tr[data-run-id="{run_id}"] .status-succeeded').count() == 1
    shot(page, "04-runs-list")


def test_a_form_error_is_shown_next_to_its_field(page: Any) -> None:
    page.goto("/runs/new")
    page.fill("#f-name", "odd-heads")
    page.select_option("#f-track", "unlimited")
    page.select_option("#f-hardware", "cpu")
    # A limit of one field is enforced by the browser itself: no request is made.
    page.fill("#k-NUM_LAYERS", "100")
    page.click("#submit-run")
    assert page.url.endswith("/runs/new") and page.eval_on_selector("#k-NUM_LAYERS", "e => e.validity.rangeOverflow")
    page.fill("#k-NUM_LAYERS", "11")
    # A rule across fields only the server knows: its 422 message lands beside the field.
    page.fill("#k-NUM_HEADS", "7")
    page.fill("#k-NUM_KV_HEADS", "7")
    page.click("#submit-run")
    error = page.locator('.field-error[data-field="config.NUM_HEADS"]')
    error.wait_for()
    assert error.inner_text() == "must divide MODEL_DIM=512"
    assert page.locator(".field.has-error #k-NUM_HEADS").count() == 1
    assert page.input_value("#f-name") == "odd-heads" and page.input_value("#k-NUM_HEADS") == "7"
    page.locator(".field.has-error").first.scroll_into_view_if_needed()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "05-form-error.png"))  # the viewport around the field


def test_choosing_a_stack_shows_its_defaults_and_keeps_what_was_typed(page: Any) -> None:
    page.goto("/runs/new")
    assert page.input_value("#k-VOCAB_SIZE") == "8192" and page.input_value("#k-XSA_LAST_N") == "11"  # the default stack
    page.fill("#k-XSA_LAST_N", "6")
    page.select_option("#k-STACK", "2026-03-23")
    # untouched knobs now show the 2026-03-23 stack's defaults; the one typed stays
    assert page.input_value("#k-VOCAB_SIZE") == "1024" and page.input_value("#k-TTT_EPOCHS") == "3"
    assert page.input_value("#k-XSA_LAST_N") == "6" and page.input_value("#shown-stack") == "2026-03-23"
    assert page.inner_text("#k-VOCAB_SIZE ~ .help .knob-default") == "1024"
    page.select_option("#k-STACK", "2026-04-27")
    assert page.input_value("#k-VOCAB_SIZE") == "8192" and page.input_value("#k-XSA_LAST_N") == "6"


def test_cancel_a_running_run(page: Any, web_stack: Stack) -> None:
    [run_id] = web_stack.submit({**TINY, "ITERATIONS": 5000}, seed=8, name="to-cancel")
    page.goto(f"/runs/{run_id}")
    # Generous waits: on a loaded 2-core machine torch's import alone can take many seconds.
    wait_status(page, ("RUNNING",), 90)
    page.wait_for_function("() => document.getElementById('log').textContent.includes('step:')", timeout=60_000)
    page.click("#cancel-button")
    assert wait_status(page, FINISHED, 60) == "CANCELLED"
    assert "CANCELLED" in page.inner_text("#events")
    shot(page, "06-cancelled")
    STATE["cancelled_id"] = run_id


def test_a_run_with_20000_points_draws_in_under_a_second(page: Any, web_stack: Stack) -> None:
    run_id = STATE.get("cancelled_id") or web_stack.submit({**TINY, "ITERATIONS": 1}, seed=9, name="points")[0]
    with Session(create_engine(web_stack.db_url)) as s:
        s.add_all(Metric(run_id=run_id, kind="train", step=10_000 + i, train_loss=4 - i / 10_000, elapsed_ms=i * 50.0) for i in range(20_000))
        s.add_all(Metric(run_id=run_id, kind="val", step=10_000 + i, val_loss=3.0, val_bpb=1.6 - i / 100_000, elapsed_ms=i * 50.0) for i in range(0, 20_000, 500))
        s.commit()
    page.goto(f"/runs/{run_id}")
    page.wait_for_function("() => document.body.dataset.chartsDrawn === '2'", timeout=10_000)
    drawn_ms = page.evaluate("() => window.caddieCharts.ms")
    since_navigation_ms = page.evaluate("() => performance.now()")
    assert max(chart_points(page, "chart-loss")) <= 1000
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "chart-timing.txt").write_text(
        f"20,000-point run: both charts drawn in {drawn_ms:.0f} ms; drawn {since_navigation_ms:.0f} ms after navigation began\n"
    )
    assert drawn_ms < 1000
    shot(page, "07-many-points")


def test_a_group_on_the_leaderboard_is_published(page: Any, web_stack: Stack) -> None:
    if "run_id" not in STATE:
        pytest.skip("needs the run the form test made")
    with web_stack.client() as c:
        key = c.get(f"/runs/{STATE['run_id']}").json()["group_key"]
    page.goto("/leaderboard?track=unlimited")
    row = page.locator(f'#leaderboard tr[data-group="{key}"]')
    assert row.count() == 1 and "browser-smoke" in row.inner_text()
    with page.expect_navigation():
        row.locator("button.publish-button").click()
    assert row.locator("button.publish-button").inner_text() == "Unpublish"
    with web_stack.client() as c:
        assert c.get(f"/groups/{key}").json()["published"] is True
    shot(page, "08-leaderboard-published")
    page.click(f'#leaderboard tr[data-group="{key}"] a:has-text("browser-smoke")')
    page.wait_for_url(f"**/groups/{key}")
    assert "published" in page.inner_text(".title-row") and "Seeds" in page.inner_text("main")
    shot(page, "09-group")


def test_another_teams_run_is_refused_with_a_404_page(browser: Any, web_stack: Stack) -> None:
    run_id = STATE.get("run_id") or web_stack.submit({**TINY, "ITERATIONS": 1}, seed=10, name="private")[0]
    with Session(create_engine(web_stack.db_url)) as s:
        accounts.create_team(s, "rivals")
        accounts.create_user(s, "rival")
        accounts.add_member(s, "rivals", "rival")
        _, token = accounts.create_token(s, "rival", "browser")
        s.commit()
    context = browser.new_context(base_url=web_stack.url)
    pg = context.new_page()
    sign_in(pg, token)
    response = pg.goto(f"/runs/{run_id}")
    assert response.status == 404
    assert "There is no run" in pg.inner_text("#error-message") and "browser-smoke" not in pg.content()
    shot(pg, "10-other-team-404")
    context.close()


def test_the_other_pages_render(page: Any) -> None:
    for path, name in (("/usage", "11-usage"), ("/groups", "12-groups"), ("/tokens", "13-tokens"), ("/teams/e2e/deliveries", "15-deliveries")):
        page.goto(path)
        assert page.locator("h1").count() == 1
        shot(page, name)
    run_id = STATE.get("run_id")
    if run_id:
        other = STATE.get("cancelled_id", run_id)
        page.goto(f"/compare?runs={run_id},{other}")
        page.wait_for_function("() => document.body.dataset.chartsDrawn === '2'", timeout=10_000)
        shot(page, "14-compare")


def test_charts_draw_under_the_content_security_policy_and_a_name_is_never_a_link(page: Any, web_stack: Stack) -> None:
    """The pages' CSP (no inline scripts) leaves the charts working, and a run named like a link
    shows as text on the compare page: plotly reads names as pseudo-HTML unless caddie escapes them."""
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    name = '<a href="https://evil.example/">click me</a>'
    ids = [web_stack.submit({**TINY, "ITERATIONS": 1}, seed=20 + i, name=name)[0] for i in range(2)]
    with Session(create_engine(web_stack.db_url)) as s:
        for run_id in ids:
            s.add_all(Metric(run_id=run_id, kind="train", step=i, train_loss=4 - i / 10, elapsed_ms=i * 50.0) for i in range(1, 20))
            s.add(Metric(run_id=run_id, kind="val", step=19, val_loss=3.0, val_bpb=1.5, elapsed_ms=950.0))
        s.commit()
    response = page.goto(f"/compare?runs={ids[0]},{ids[1]}")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.wait_for_function("() => document.body.dataset.chartsDrawn === '2'", timeout=10_000)
    assert page.locator(".chart a").count() == 0
    assert "click me</a>" in page.locator(".chart .legend").first.text_content()
    assert not violations, violations
    shot(page, "15-compare-link-name")
